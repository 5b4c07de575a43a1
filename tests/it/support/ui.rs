//! Helpers for driving the web UI as a browser does: the session cookie and form submissions
//! (users come from `support::htpasswd`).

use super::client::header;

/// The value of the first `<input name="NAME" value="...">` in `html`.
pub fn input_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// An `application/x-www-form-urlencoded` body, as a browser submits a form.
pub fn form(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// The `berth_ui=...` pair of a response's `Set-Cookie`.
pub fn session_cookie(r: &reqwest::Response) -> String {
    let set = header(r, "set-cookie");
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    set.split(';').next().unwrap().to_owned()
}
