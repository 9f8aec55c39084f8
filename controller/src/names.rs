//! Names of the objects a collector owns, valid whatever the collector's
//! own name: a LogCollector may be named with up to 253 characters and
//! dots (a DNS subdomain), while a Service name must be a DNS-1035 label of
//! at most 63 characters, a label value at most 63 characters, and a
//! StatefulSet's pods carry `statefulset.kubernetes.io/pod-name` and
//! `controller-revision-hash` labels built from its name (so at most 52).
//!
//! Short plain names are kept as they are (objects of existing collectors
//! keep their names); others are cut and given a hash of the full name, so
//! two long names that share a prefix still differ.

use xxhash_rust::xxh3::xxh3_64;

/// Longest name of a child object (the StatefulSet's limit, which then
/// holds for every kind): 63 minus `-` and a 10-digit revision hash.
pub const MAX_CHILD: usize = 52;

/// Longest label value.
pub const MAX_LABEL: usize = 63;

fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && !s.ends_with('-')
}

/// `base` with `suffix`, as a DNS-1035 label of at most `max` characters:
/// unchanged when it already is one, else dots become dashes, and a name
/// too long is cut and ends in 8 hex digits of the original's hash.
pub fn child(base: &str, suffix: &str, max: usize) -> String {
    let whole = format!("{base}{suffix}");
    if whole.len() <= max && plain(&whole) {
        return whole;
    }
    let mut cleaned: String = base
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    if !cleaned.starts_with(|c: char| c.is_ascii_lowercase()) {
        cleaned.insert(0, 'x');
    }
    let hash = format!("{:08x}", xxh3_64(base.as_bytes()) as u32);
    // cut + '-' + hash + suffix <= max
    let room = max.saturating_sub(suffix.len() + 1 + hash.len());
    let cut = cleaned[..cleaned.len().min(room)].trim_end_matches('-');
    format!("{cut}-{hash}{suffix}")
}

/// The `app.kubernetes.io/instance` label value for a collector: its name
/// when it fits a label, else a cut name with a hash.
pub fn instance(name: &str) -> String {
    let ok = name.len() <= MAX_LABEL
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        name.to_owned()
    } else {
        child(name, "", MAX_LABEL)
    }
}

/// Name of the aggregator StatefulSet (and its Service).
pub fn aggregator_name(lc: &str) -> String {
    child(lc, "-aggregator", MAX_CHILD)
}

/// Name of the aggregator's headless (governing) Service.
pub fn aggregator_headless_name(lc: &str) -> String {
    child(lc, "-aggregator-headless", 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns1035(s: &str, max: usize) -> bool {
        s.len() <= max && plain(s)
    }

    #[test]
    fn short_names_do_not_change() {
        assert_eq!(child("logs", "-agent", MAX_CHILD), "logs-agent");
        assert_eq!(
            child("logfleet", "-aggregator-headless", 63),
            "logfleet-aggregator-headless"
        );
        assert_eq!(instance("logs"), "logs");
        assert_eq!(
            instance("my.logs"),
            "my.logs",
            "dots are fine in label values"
        );
    }

    #[test]
    fn long_and_dotted_names_become_valid_and_stay_distinct() {
        let long_a = format!("{}a", "x".repeat(252));
        let long_b = format!("{}b", "x".repeat(252));
        for name in [
            long_a.as_str(),
            long_b.as_str(),
            "team.prod.logs",
            "9lives",
            "a..b",
        ] {
            for (suffix, max) in [
                ("-agent", MAX_CHILD),
                ("-aggregator", MAX_CHILD),
                ("-aggregator-headless", 63),
                ("-agent-metrics", 63),
            ] {
                let c = child(name, suffix, max);
                assert!(dns1035(&c, max), "{name}{suffix} -> {c}");
                assert!(c.ends_with(suffix), "{c}");
            }
            let i = instance(name);
            assert!(i.len() <= MAX_LABEL, "{i}");
        }
        assert_ne!(
            child(&long_a, "-agent", MAX_CHILD),
            child(&long_b, "-agent", MAX_CHILD)
        );
        assert_ne!(instance(&long_a), instance(&long_b));
        // A dotted name gets a hash too: it cannot collide with the dashed one.
        assert_ne!(
            child("team.prod.logs", "-agent", MAX_CHILD),
            child("team-prod-logs", "-agent", MAX_CHILD)
        );
    }
}
