//! The pod labels agents copy onto lines by default, as the agent and the
//! controller's rendering both need them. What a label name may be is
//! LogQL's rule: `logfleet_logql::labels::sanitize`.

/// The pod labels agents copy onto lines unless told otherwise: `app` and
/// the recommended `app.kubernetes.io/*` set.
pub const DEFAULT_POD_LABELS: [&str; 7] = [
    "app",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
];
