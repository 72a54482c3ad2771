//! The node clients' HTTP handling against a local server that answers as Esplora and
//! as a JSON-RPC node do in the cases a real regtest node cannot produce on demand:
//! 429 with Retry-After, 5xx, a timeout, Esplora's REST shapes. (Esplora has no regtest
//! build installable here; its texts are Esplora's own, see `classify.rs`.) Also checks
//! that connections are kept alive and reused.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use raregen::chain::node::{BitcoindClient, EsploraClient};
use raregen::config::Settings;
use raregen_actors::{BroadcastOutcome, Node, NodeError, OutpointState, TxPresence};

const TXID: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const SPENT_TXID: &str = "2222222222222222222222222222222222222222222222222222222222222222";

#[derive(Default)]
struct Seen {
    peers: HashSet<u16>,
    requests: usize,
    auth: Vec<Option<String>>,
}

type Shared = web::Data<Arc<Mutex<Seen>>>;

fn note(seen: &Shared, req: &HttpRequest) {
    let mut s = seen.lock().unwrap();
    s.peers.insert(req.peer_addr().unwrap().port());
    s.requests += 1;
    s.auth.push(
        req.headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
    );
}

/// Esplora: POST /tx answers by the first byte of the transaction.
async fn esplora_post_tx(seen: Shared, req: HttpRequest, body: String) -> HttpResponse {
    note(&seen, &req);
    match &body[..2] {
        "01" => HttpResponse::Ok().body(TXID),
        "02" => HttpResponse::BadRequest().body(
            r#"sendrawtransaction RPC error: {"code":-26,"message":"min relay fee not met, 110 < 141"}"#,
        ),
        "03" => HttpResponse::BadRequest()
            .body(r#"sendrawtransaction RPC error: {"code":-25,"message":"bad-txns-inputs-missingorspent"}"#),
        "04" => HttpResponse::BadRequest()
            .body(r#"sendrawtransaction RPC error: {"code":-27,"message":"Transaction already in block chain"}"#),
        "05" => HttpResponse::TooManyRequests()
            .insert_header(("retry-after", "7"))
            .body("Too Many Requests"),
        "06" => HttpResponse::BadGateway().body("upstream down"),
        _ => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            HttpResponse::Ok().body(TXID)
        }
    }
}

async fn esplora_get(seen: Shared, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    note(&seen, &req);
    let p = path.into_inner();
    let tx = format!(
        r#"{{"txid":"{TXID}","vin":[{{"is_coinbase":false}}],"vout":[{{"scriptpubkey":"0014aabbccddeeff00112233445566778899aabbccdd","value":12345}}],"status":{{"confirmed":true,"block_height":100,"block_hash":"00ab"}}}}"#
    );
    match p.as_str() {
        "blocks/tip/height" => HttpResponse::Ok().body("105"),
        x if x == format!("tx/{TXID}/status") => HttpResponse::Ok()
            .content_type("application/json")
            .body(r#"{"confirmed":true,"block_height":100,"block_hash":"00ab"}"#),
        x if x == format!("tx/{SPENT_TXID}/status") => HttpResponse::Ok()
            .content_type("application/json")
            .body(r#"{"confirmed":false}"#),
        x if x == format!("tx/{TXID}") || x == format!("tx/{SPENT_TXID}") => {
            HttpResponse::Ok().content_type("application/json").body(tx)
        }
        x if x == format!("tx/{TXID}/outspend/0") => HttpResponse::Ok().body(r#"{"spent":false}"#),
        x if x == format!("tx/{SPENT_TXID}/outspend/0") => HttpResponse::Ok().body(format!(
            r#"{{"spent":true,"txid":"{TXID}","vin":0,"status":{{"confirmed":false}}}}"#
        )),
        _ => HttpResponse::NotFound().body("Transaction not found"),
    }
}

/// JSON-RPC: answers by method, with HTTP statuses as Bitcoin Core uses them.
async fn rpc(seen: Shared, req: HttpRequest, body: web::Json<serde_json::Value>) -> HttpResponse {
    note(&seen, &req);
    let raw = body["params"][0].as_str().unwrap_or("").to_owned();
    match (body["method"].as_str().unwrap(), &raw.get(..2).unwrap_or("")) {
        ("sendrawtransaction", &"01") => HttpResponse::Ok().json(serde_json::json!({"result": TXID, "error": null})),
        ("sendrawtransaction", &"02") => HttpResponse::InternalServerError().json(serde_json::json!(
            {"result": null, "error": {"code": -26, "message": "txn-mempool-conflict"}}
        )),
        ("sendrawtransaction", &"03") => HttpResponse::InternalServerError().json(serde_json::json!(
            {"result": null, "error": {"code": -27, "message": "Transaction already in block chain"}}
        )),
        ("sendrawtransaction", &"05") => HttpResponse::TooManyRequests().insert_header(("retry-after", "2")).finish(),
        ("sendrawtransaction", &"06") => HttpResponse::ServiceUnavailable().body("<html>maintenance</html>"),
        ("sendrawtransaction", _) => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            HttpResponse::Ok().json(serde_json::json!({"result": TXID, "error": null}))
        }
        ("getmempoolentry", _) => HttpResponse::InternalServerError().json(serde_json::json!(
            {"result": null, "error": {"code": -5, "message": "Transaction not in mempool"}}
        )),
        ("getrawtransaction", _) => HttpResponse::Ok().json(serde_json::json!(
            {"result": {"txid": TXID, "confirmations": 6, "blockhash": "00cd"}, "error": null}
        )),
        ("getblockcount", _) => HttpResponse::Ok().json(serde_json::json!({"result": 205, "error": null})),
        _ => HttpResponse::NotFound().json(serde_json::json!(
            {"result": null, "error": {"code": -32601, "message": "Method not found"}}
        )),
    }
}

fn serve(seen: Arc<Mutex<Seen>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let data = web::Data::new(seen);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/", web::post().to(rpc))
            .route("/api/tx", web::post().to(esplora_post_tx))
            .route("/api/{tail:.*}", web::get().to(esplora_get))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    format!("http://{addr}")
}

fn settings(url: &str, kind: &str) -> Settings {
    Settings::load_from(
        None,
        vec![
            ("RAREGEN__NODE__KIND".to_owned(), kind.to_owned()),
            ("RAREGEN__NODE__URL".to_owned(), url.to_owned()),
            ("RAREGEN__NODE__USER".to_owned(), "u".to_owned()),
            ("RAREGEN__NODE__PASSWORD".to_owned(), "p4ss".to_owned()),
            ("RAREGEN__NODE__TIMEOUT".to_owned(), "1s".to_owned()),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn esplora_client_speaks_rest() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let base = serve(seen.clone());
    let client = EsploraClient::new(&settings(&format!("{base}/api"), "esplora").node).unwrap();

    assert_eq!(
        client.broadcast(&[0x01, 0xaa]).await,
        BroadcastOutcome::Accepted
    );
    assert_eq!(
        client.broadcast(&[0x02]).await,
        BroadcastOutcome::Rejected {
            reason: "min relay fee not met, 110 < 141".into(),
            input_problem: false
        }
    );
    assert!(matches!(
        client.broadcast(&[0x03]).await,
        BroadcastOutcome::Rejected {
            input_problem: true,
            ..
        }
    ));
    assert_eq!(client.broadcast(&[0x04]).await, BroadcastOutcome::Accepted);
    assert_eq!(
        client.broadcast(&[0x05]).await,
        BroadcastOutcome::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert!(matches!(
        client.broadcast(&[0x06]).await,
        BroadcastOutcome::Unknown { .. }
    ));
    match client.broadcast(&[0x07]).await {
        BroadcastOutcome::Unknown { reason } => assert!(reason.contains("timed out"), "{reason}"),
        other => panic!("{other:?}"),
    }

    assert_eq!(
        client.tx_presence(TXID).await.unwrap(),
        TxPresence::Confirmed {
            confirmations: 6,
            block_height: Some(100),
            block_hash: Some("00ab".into())
        }
    );
    assert_eq!(
        client.tx_presence(SPENT_TXID).await.unwrap(),
        TxPresence::InMempool
    );
    assert_eq!(
        client.tx_presence(&"9".repeat(64)).await.unwrap(),
        TxPresence::Unknown
    );
    assert_eq!(
        client.outpoint(TXID, 0).await.unwrap(),
        OutpointState::Unspent {
            value: 12345,
            script_pubkey: hex::decode("0014aabbccddeeff00112233445566778899aabbccdd").unwrap(),
            confirmations: 6,
            coinbase: false
        }
    );
    assert_eq!(
        client.outpoint(SPENT_TXID, 0).await.unwrap(),
        OutpointState::Gone {
            spent_by: Some(TXID.into())
        }
    );
    assert_eq!(
        client.outpoint(TXID, 5).await.unwrap(),
        OutpointState::Gone { spent_by: None }
    );
    assert_eq!(
        client.outpoint(&"9".repeat(64), 0).await.unwrap(),
        OutpointState::Gone { spent_by: None }
    );

    let seen = seen.lock().unwrap();
    assert!(
        seen.auth
            .iter()
            .all(|a| a.as_deref() == Some("Basic dTpwNHNz")),
        "basic auth on every call"
    );
    // 17 requests; the connection broken by the timeout is the only reason for a second.
    assert!(seen.requests >= 17);
    assert!(
        seen.peers.len() <= 2,
        "keep-alive: {} connections for {} requests",
        seen.peers.len(),
        seen.requests
    );
}

#[tokio::test]
async fn bitcoind_client_handles_http_statuses_and_reuses_connections() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let base = serve(seen.clone());
    let client = BitcoindClient::new(&settings(&base, "bitcoind").node).unwrap();

    for _ in 0..20 {
        assert_eq!(client.broadcast(&[0x01]).await, BroadcastOutcome::Accepted);
    }
    assert!(matches!(
        client.broadcast(&[0x02]).await,
        BroadcastOutcome::Rejected {
            input_problem: true,
            ..
        }
    ));
    assert_eq!(client.broadcast(&[0x03]).await, BroadcastOutcome::Accepted);
    assert_eq!(
        client.broadcast(&[0x05]).await,
        BroadcastOutcome::RateLimited {
            retry_after: Some(Duration::from_secs(2))
        }
    );
    assert!(matches!(
        client.broadcast(&[0x06]).await,
        BroadcastOutcome::Unknown { .. }
    ));
    assert_eq!(
        client.tx_presence(TXID).await.unwrap(),
        TxPresence::Confirmed {
            confirmations: 6,
            block_height: Some(200),
            block_hash: Some("00cd".into())
        }
    );
    let connections_before_timeout = seen.lock().unwrap().peers.len();
    assert_eq!(
        connections_before_timeout, 1,
        "keep-alive: one connection for all calls"
    );
    assert!(matches!(
        client.broadcast(&[0x07]).await,
        BroadcastOutcome::Unknown { .. }
    ));

    // Credentials in the URL are used and never shown.
    let with_creds = base.replace("http://", "http://u:p4ss@");
    let mut s = settings(&with_creds, "bitcoind");
    s.node.user = String::new();
    s.node.password = secrecy::SecretString::from(String::new());
    let client = BitcoindClient::new(&s.node).unwrap();
    assert_eq!(client.broadcast(&[0x01]).await, BroadcastOutcome::Accepted);
    assert_eq!(
        seen.lock().unwrap().auth.last().unwrap().as_deref(),
        Some("Basic dTpwNHNz")
    );
    let err = client
        .call("nosuchmethod", serde_json::json!([]))
        .await
        .unwrap_err();
    let shown = format!("{:?}", NodeError::from(err));
    assert!(
        shown.contains("Method not found") && !shown.contains("p4ss"),
        "{shown}"
    );
}
