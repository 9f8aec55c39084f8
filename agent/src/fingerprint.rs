//! Stable file identity.
//!
//! A file is tracked while open by device and inode, which follow it
//! through renames. Its identity on the wire and in checkpoints is a hash of
//! its labels and a fingerprint of its first bytes: that survives kubelet's
//! gzip of a rotated file (a new inode, the same decompressed bytes) and
//! tells a reused inode or a truncated-and-rewritten file from the old one.

use logfleet_proto::v1::FileLabels;

/// How many leading bytes the fingerprint covers at most. The fingerprint
/// ends earlier, after the first newline, so that a short first line
/// identifies a file as soon as it is complete.
pub const FINGERPRINT_MAX: usize = 256;

/// The fingerprint prefix of `head` (the file's first bytes), or `None`
/// when `head` is too short to decide yet: no newline and fewer than
/// [`FINGERPRINT_MAX`] bytes. With `finished`, whatever is there counts.
pub fn prefix(head: &[u8], finished: bool) -> Option<&[u8]> {
    let window = &head[..head.len().min(FINGERPRINT_MAX)];
    match memchr::memchr(b'\n', window) {
        Some(nl) => Some(&window[..=nl]),
        None if window.len() == FINGERPRINT_MAX => Some(window),
        None if finished && !window.is_empty() => Some(window),
        None => None,
    }
}

/// The file's identity: labels and fingerprint prefix hashed with XXH3,
/// which is specified and stable across versions (unlike std's hasher).
pub fn file_id(labels: &FileLabels, prefix: &[u8]) -> u64 {
    let mut buf = Vec::with_capacity(128 + prefix.len());
    for part in [
        labels.namespace.as_bytes(),
        labels.pod.as_bytes(),
        labels.pod_uid.as_bytes(),
        labels.container.as_bytes(),
        labels.restart.to_string().as_bytes(),
        prefix,
    ] {
        buf.extend_from_slice(&(part.len() as u32).to_le_bytes());
        buf.extend_from_slice(part);
    }
    xxhash_rust::xxh3::xxh3_64(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_first_line_identifies_once_complete() {
        assert_eq!(prefix(b"ab", false), None);
        assert_eq!(prefix(b"ab\ncd", false), Some(&b"ab\n"[..]));
        assert_eq!(prefix(b"ab", true), Some(&b"ab"[..]));
        assert_eq!(prefix(b"", true), None);
        let long = vec![b'x'; 1000];
        assert_eq!(prefix(&long, false).unwrap().len(), FINGERPRINT_MAX);
    }

    #[test]
    fn identity_depends_on_labels_and_content() {
        let l = FileLabels {
            namespace: "ns".into(),
            pod: "p".into(),
            pod_uid: "u".into(),
            container: "c".into(),
            restart: 0,
            extra: Vec::new(),
        };
        let mut l2 = l.clone();
        l2.restart = 1;
        assert_eq!(file_id(&l, b"a\n"), file_id(&l.clone(), b"a\n"));
        assert_ne!(file_id(&l, b"a\n"), file_id(&l2, b"a\n"));
        assert_ne!(file_id(&l, b"a\n"), file_id(&l, b"b\n"));
    }
}
