//! Writes the JSON Schema of every payload to a folder, by default
//! `docs/schemas`: `cargo run -p upr-shared --example schemas -- docs/schemas`.
//! Run it after changing a wire type; a test fails until the files match.

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "docs/schemas".to_owned());
    if let Err(e) = upr_schema::write_all(std::path::Path::new(&dir)) {
        eprintln!("cannot write the schemas to {dir}: {e}");
        std::process::exit(1);
    }
    for doc in upr_schema::documents() {
        println!("{dir}/{}", doc.path);
    }
}
