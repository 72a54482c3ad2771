//! The operator console: one self-contained page (HTML, CSS and JavaScript embedded in
//! the binary, no CDN, no build step) that reads only the JSON API.

use actix_web::{get, HttpResponse};

const PAGE: &str = include_str!("console.html");

fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        // The page holds the API key in memory: never cached, never framed.
        .insert_header(("cache-control", "no-store"))
        .insert_header(("x-frame-options", "DENY"))
        .insert_header((
            "content-security-policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ))
        .body(PAGE)
}

/// `GET /`: the console.
#[get("/")]
pub async fn page() -> HttpResponse {
    serve()
}

/// `GET /console`: the console.
#[get("/console")]
pub async fn console() -> HttpResponse {
    serve()
}
