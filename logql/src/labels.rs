//! Label names as LogQL accepts them: the agent names pod labels with this
//! rule, and the log pipeline names the labels its parsers extract.

/// Replaces every character outside `[A-Za-z0-9_]` by `_`, and puts a `_`
/// before a leading digit: a name Prometheus and Loki accept
/// (`app.kubernetes.io/name` becomes `app_kubernetes_io_name`).
pub fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_made_valid() {
        assert_eq!(
            super::sanitize("app.kubernetes.io/name"),
            "app_kubernetes_io_name"
        );
        assert_eq!(super::sanitize("1st"), "_1st");
        assert_eq!(super::sanitize("ok_9"), "ok_9");
    }
}
