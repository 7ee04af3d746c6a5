//! A real browser for the gateway's page tests: Debian's `chromium`,
//! headless, as `scripts/lib.sh` (`ensure_chromium`) installs it. The
//! tests read the DOM the browser built, so they check what a person is
//! shown, not just the bytes the server sent.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// `CHROMIUM_BIN`, else `/usr/bin/chromium`.
pub fn chromium_bin() -> PathBuf {
    let path = std::env::var_os("CHROMIUM_BIN")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: run `source scripts/lib.sh; ensure_chromium` (scripts/test does), or set CHROMIUM_BIN",
        path.display()
    );
    path
}

/// How long one browser run may take (it starts cold each time).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// What one browser run printed: stdout and stderr.
fn run(args: &[String]) -> (String, String) {
    let profile = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(chromium_bin())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        // Files, not pipes: a full pipe nobody reads would stall it.
        .stdout(std::fs::File::create(scratch.path().join("stdout")).expect("stdout file"))
        .stderr(std::fs::File::create(scratch.path().join("stderr")).expect("stderr file"))
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    loop {
        if child.try_wait().expect("chromium status").is_some() {
            break;
        }
        if Instant::now() > deadline {
            // Our own child, by its handle.
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} did not finish within {BROWSER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let read = |name: &str| {
        String::from_utf8_lossy(&std::fs::read(scratch.path().join(name)).unwrap_or_default())
            .into_owned()
    };
    (read("stdout"), read("stderr"))
}

/// The DOM chromium builds for `url` (`--dump-dom`). A browser that dies
/// while starting (it does on a loaded machine, printing nothing) is
/// started again, up to three times: what is tested is the page.
pub fn dump_dom(url: &str) -> String {
    let mut last = String::new();
    for _ in 0..3 {
        let (dom, err) = run(&["--dump-dom".to_string(), url.to_string()]);
        if dom.contains("<html") {
            return dom;
        }
        last = err;
    }
    let tail: Vec<&str> = last.lines().rev().take(20).collect();
    panic!(
        "chromium showed no page for {url} in three tries; its last words:\n{}",
        tail.join("\n")
    );
}

/// A screenshot of `url` at `width` x `height` CSS pixels into `file`.
pub fn screenshot(url: &str, file: &Path, width: u32, height: u32) {
    let _ = run(&[
        format!("--screenshot={}", file.display()),
        format!("--window-size={width},{height}"),
        "--hide-scrollbars".to_string(),
        url.to_string(),
    ]);
}

/// The text a person reads on the page: the DOM without its tags, with
/// blanks collapsed and the common entities decoded.
pub fn visible_text(dom: &str) -> String {
    let body = dom.split("<body").nth(1).unwrap_or(dom);
    let mut text = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", " ");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The `href` of the link whose text is `label`, in a DOM.
pub fn link_to(dom: &str, label: &str) -> Option<String> {
    dom.split("<a ").skip(1).find_map(|a| {
        let (attrs, rest) = a.split_once('>')?;
        let text = rest.split("</a>").next()?;
        if visible_text(text) != label {
            return None;
        }
        let href = attrs.split("href=\"").nth(1)?.split('"').next()?;
        Some(href.replace("&amp;", "&"))
    })
}
