//! The HTTP gateway (contract V3.5) against a real nats-server and the real
//! services.

use upr_nats::contract::services;
use upr_tests::TestApp;

#[tokio::test]
async fn healthz_is_ok_while_the_projection_answers_and_unknown_paths_are_json_404() {
    let app = TestApp::builder()
        .ingest()
        .projection()
        .gateway()
        .start()
        .await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert!(app.gateway().healthcheck().success());

    let missing = app.get("/no/such/page").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("content-type"), Some("application/json"));
    let body = missing.json();
    assert_eq!(body["ok"], false);
    assert_eq!(body["error"]["code"], "not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/no/such/page"),
        "{body}"
    );
}

#[tokio::test]
async fn healthz_is_503_while_the_projection_does_not_answer() {
    let mut app = TestApp::builder()
        .ingest()
        .projection()
        .gateway()
        .start()
        .await;
    assert_eq!(app.get("/healthz").await.status, 200);
    app.projection_mut().kill9();
    let health = app.get("/healthz").await;
    assert_eq!(health.status, 503, "{}", health.text());
    assert_eq!(health.json()["error"]["code"], "unavailable");
    assert!(!app.gateway().healthcheck().success());
    // The gateway itself is still serving.
    assert_eq!(app.service(services::GATEWAY).name(), services::GATEWAY);
    assert_eq!(app.get("/nope").await.status, 404);
}
