//! What every store checks of an agent's push before storing it: what
//! decoding cannot (labels, ranges, line offsets, which de-duplication
//! relies on).

use logfleet_proto::v1::{LineBatch, PushRequest};

/// A push that is malformed, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// The most extra labels a file may carry.
pub const MAX_EXTRA_LABELS: usize = 64;

/// Checks a file's extra labels: at most [`MAX_EXTRA_LABELS`], names like
/// Prometheus' (`[a-zA-Z_][a-zA-Z0-9_]*`, up to 128 bytes), sorted and
/// unique, none of the built-in names, values up to 1 KiB.
pub fn check_extra(extra: &[logfleet_proto::v1::Label]) -> Result<(), String> {
    if extra.len() > MAX_EXTRA_LABELS {
        return Err(format!("more than {MAX_EXTRA_LABELS} extra labels"));
    }
    for (i, l) in extra.iter().enumerate() {
        let valid = !l.name.is_empty()
            && l.name.len() <= 128
            && !l.name.starts_with(|c: char| c.is_ascii_digit())
            && l.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("{:?} is not a label name", l.name));
        }
        if crate::labels::LABEL_NAMES.contains(&l.name.as_str()) {
            return Err(format!("{:?} is a built-in label", l.name));
        }
        if l.value.len() > 1024 {
            return Err(format!("the value of {:?} is over 1 KiB", l.name));
        }
        if i > 0 && extra[i - 1].name >= l.name {
            return Err("extra labels must be sorted by name, each once".into());
        }
    }
    Ok(())
}

/// Checks what decoding cannot: labels, ranges and line offsets, which the
/// de-duplication relies on.
pub fn validate(req: &PushRequest, batch: &LineBatch) -> Result<(), Invalid> {
    if req.node.is_empty() || req.node.len() > 253 {
        return Err(Invalid("node name must be 1 to 253 bytes".into()));
    }
    if req.ranges.len() > 100_000 {
        return Err(Invalid("more than 100000 ranges".into()));
    }
    let mut seen = std::collections::HashSet::with_capacity(req.ranges.len());
    for (i, r) in req.ranges.iter().enumerate() {
        let Some(labels) = &r.labels else {
            return Err(Invalid(format!("range {i} has no labels")));
        };
        check_extra(&labels.extra).map_err(|why| Invalid(format!("range {i}: {why}")))?;
        if r.start > r.end {
            return Err(Invalid(format!("range {i} starts after its end")));
        }
        if !seen.insert(r.file_id) {
            return Err(Invalid(format!(
                "file {:#x} appears in two ranges",
                r.file_id
            )));
        }
    }
    for (i, l) in batch.lines().enumerate() {
        let r = &req.ranges[l.range as usize];
        let reach = r.end.max(r.lines_end);
        if l.offset < r.start || l.offset >= reach {
            return Err(Invalid(format!(
                "line {i} at offset {} lies outside its range [{}, {})",
                l.offset, r.start, reach
            )));
        }
    }
    Ok(())
}
