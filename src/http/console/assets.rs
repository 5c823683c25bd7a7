//! The console's files, embedded in the binary at build time: what is
//! served is exactly what was reviewed in `static/`, with no build step.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::http::problem::Problem;

/// (path under `/console/`, content type, bytes).
const FILES: &[(&str, &str, &[u8])] = &[
    ("index.html", HTML, include_bytes!("static/index.html")),
    ("style.css", CSS, include_bytes!("static/style.css")),
    ("app.js", JS, include_bytes!("static/app.js")),
    ("api.js", JS, include_bytes!("static/api.js")),
    ("ui.js", JS, include_bytes!("static/ui.js")),
    ("verify.js", JS, include_bytes!("static/verify.js")),
    (
        "pages/signin.js",
        JS,
        include_bytes!("static/pages/signin.js"),
    ),
    (
        "pages/overview.js",
        JS,
        include_bytes!("static/pages/overview.js"),
    ),
    (
        "pages/audit.js",
        JS,
        include_bytes!("static/pages/audit.js"),
    ),
    ("pages/keys.js", JS, include_bytes!("static/pages/keys.js")),
    (
        "pages/users.js",
        JS,
        include_bytes!("static/pages/users.js"),
    ),
    (
        "pages/account.js",
        JS,
        include_bytes!("static/pages/account.js"),
    ),
    (
        "pages/records.js",
        JS,
        include_bytes!("static/pages/records.js"),
    ),
    (
        "pages/secrets.js",
        JS,
        include_bytes!("static/pages/secrets.js"),
    ),
];

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// The file at `path`, or the API's 404.
pub(super) fn serve(path: &str) -> Response {
    let Some((_, ctype, bytes)) = FILES.iter().find(|(p, _, _)| *p == path) else {
        return Problem::not_found().into_response();
    };
    let mut resp = (StatusCode::OK, *bytes).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp
}

#[cfg(test)]
mod tests {
    use super::FILES;

    /// No inline script or style, no `eval`, nothing fetched from elsewhere:
    /// what the content security policy enforces in the browser, checked
    /// here on the files themselves.
    #[test]
    fn files_need_nothing_the_policy_forbids() {
        for (path, _, bytes) in FILES {
            let text = std::str::from_utf8(bytes).unwrap();
            for bad in [
                "eval(",
                "new Function",
                "innerHTML",
                "style=\"",
                "<style",
                "http://",
                "https://",
                "javascript:",
            ] {
                assert!(!text.contains(bad), "{path} contains {bad}");
            }
            if path.ends_with(".html") {
                assert!(!text.contains("<script>"), "{path} has an inline script");
                // An inline handler: ` on<letters>=`.
                let inline = text.match_indices(" on").any(|(i, _)| {
                    let rest = &text[i + 3..];
                    let name = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
                    name > 0 && rest[name..].starts_with('=')
                });
                assert!(!inline, "{path} has an inline handler");
            }
        }
    }
}
