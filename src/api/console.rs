//! The operator console: one self-contained page (HTML, CSS and JavaScript embedded in
//! the binary, no CDN, no build step) that reads only the JSON API.

use std::sync::OnceLock;

use actix_web::{get, HttpResponse};
use bitcoin::hashes::{sha256, Hash};

const PAGE: &str = include_str!("console.html");

/// The Content-Security-Policy: the page's one script by its hash (no other script
/// runs, not even one injected inline), requests to this daemon only.
fn policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        let script = inline_script(PAGE);
        let hash = base64(sha256::Hash::hash(script.as_bytes()).as_byte_array());
        format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        )
    })
}

/// The text of the page's one `<script>` element.
fn inline_script(html: &str) -> &str {
    let open = html.find("<script>").expect("the console has a script") + "<script>".len();
    let close = open + html[open..].find("</script>").expect("the script ends");
    assert!(
        !html[close..].contains("<script"),
        "the console has one script"
    );
    &html[open..close]
}

/// Standard base64 with padding (for the CSP hash).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        // The page holds the API key in memory: never cached, never framed.
        .insert_header(("cache-control", "no-store"))
        .insert_header(("x-frame-options", "DENY"))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header(("referrer-policy", "no-referrer"))
        .insert_header(("content-security-policy", policy()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_the_standard_one() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn the_policy_names_the_pages_one_script() {
        assert!(policy().contains("script-src 'sha256-"));
        assert!(!policy().contains("script-src 'unsafe-inline'"));
        assert!(inline_script(PAGE).contains("fetch("));
    }
}
