//! Checkpoints survive what a node does at start and under faults: a log
//! root not mounted yet, more files than `--max-open-files`, a torn or
//! corrupt checkpoint file. A checkpoint dropped by mistake makes the file
//! read again from offset 0 (a whole node re-sent, stored again past the
//! aggregator's retention, its multi-line setting lost).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logfleet_agent::batch::BatchBuilder;
use logfleet_agent::checkpoint::{self, Checkpoints};
use logfleet_agent::discover::{self, Filter};
use logfleet_agent::tail::{TailConfig, Tailer};
use logfleet_proto::v1::Compression;

fn write(root: &Path, pod: &str, n: usize) {
    let dir = root.join(format!("ns_{pod}_uid-{pod}/c"));
    std::fs::create_dir_all(&dir).unwrap();
    let text: String = (0..n)
        .map(|i| format!("2026-12-03T10:00:00.{i:09}Z stdout F {pod} line {i}\n"))
        .collect();
    std::fs::write(dir.join("0.log"), text).unwrap();
}

fn cfg(max_open_files: usize) -> TailConfig {
    TailConfig {
        max_open_files,
        rotate_wait: Duration::ZERO,
        ..Default::default()
    }
}

/// One pass: reads what is new and acknowledges it, as the shipper does.
fn pass(tailer: &mut Tailer, scan: discover::Scanned, cp: &Arc<Mutex<Checkpoints>>) -> usize {
    tailer.apply_scanned(scan);
    let mut b = BatchBuilder::default();
    tailer.poll(&mut b, &mut |_| true);
    if b.is_empty() {
        return 0;
    }
    let sealed = b.seal("n", Compression::None, 0).unwrap();
    let mut c = cp.lock().unwrap();
    for e in &sealed.ends {
        c.advance(e.file_id, &e.path, e.end);
    }
    sealed.ends.len()
}

/// Three files read and acknowledged: their checkpoints.
fn acknowledged(root: &Path) -> Checkpoints {
    for p in ["a", "b", "c"] {
        write(root, p, 5);
    }
    let cp = Arc::new(Mutex::new(Checkpoints::default()));
    let mut t = Tailer::new(cfg(1024), cp.clone());
    assert_eq!(
        pass(&mut t, discover::scan_all(root, &Filter::default()), &cp),
        3
    );
    let c = cp.lock().unwrap().clone();
    assert_eq!(c.files.len(), 3);
    c
}

#[test]
fn files_deferred_at_start_keep_their_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let saved = acknowledged(&root);
    // Restarted with room for one file: two wait their turn.
    let cp = Arc::new(Mutex::new(saved.clone()));
    let mut t = Tailer::new(cfg(1), cp.clone());
    assert_eq!(
        pass(&mut t, discover::scan_all(&root, &Filter::default()), &cp),
        0
    );
    assert_eq!(*cp.lock().unwrap(), saved, "no checkpoint dropped");
    assert_eq!(t.stats.lost_files, 0, "no false alarm");
}

#[test]
fn an_unmounted_log_root_at_start_keeps_every_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let saved = acknowledged(&root);
    let hidden = tmp.path().join("not-yet");
    std::fs::rename(&root, &hidden).unwrap();
    let cp = Arc::new(Mutex::new(saved.clone()));
    let mut t = Tailer::new(cfg(1024), cp.clone());
    let scan = discover::scan_all(&root, &Filter::default());
    assert!(!scan.complete);
    pass(&mut t, scan, &cp);
    assert_eq!(*cp.lock().unwrap(), saved);
    // Mounted: the files resume at their checkpoints, nothing re-read.
    std::fs::rename(&hidden, &root).unwrap();
    assert_eq!(
        pass(&mut t, discover::scan_all(&root, &Filter::default()), &cp),
        0
    );
    // And a file really gone while the agent was down is forgotten then.
    std::fs::remove_dir_all(root.join("ns_b_uid-b")).unwrap();
    let cp = Arc::new(Mutex::new(saved.clone()));
    let mut t = Tailer::new(cfg(1024), cp.clone());
    pass(&mut t, discover::scan_all(&root, &Filter::default()), &cp);
    assert_eq!(cp.lock().unwrap().files.len(), 2);
    assert_eq!(t.stats.lost_files, 1);
}

#[test]
fn a_torn_checkpoint_file_falls_back_to_the_previous_one() {
    let tmp = tempfile::tempdir().unwrap();
    let path = checkpoint::file_in(tmp.path());
    let mut cp = Checkpoints::default();
    cp.advance(1, Path::new("/a"), 10);
    checkpoint::save(&path, &cp).unwrap();
    cp.advance(1, Path::new("/a"), 20);
    checkpoint::save(&path, &cp).unwrap();
    // Torn (a disk that lied, a copy cut short): the previous save loads.
    let data = std::fs::read(&path).unwrap();
    std::fs::write(&path, &data[..data.len() / 2]).unwrap();
    let loaded = checkpoint::load(&path).unwrap();
    assert_eq!(loaded.offset(1), Some(10));
    // Both unusable: the agent starts anyway, from nothing (the aggregator
    // drops what it already has), and the bad file is kept aside.
    std::fs::write(&path, b"{").unwrap();
    std::fs::write(checkpoint::previous(&path), b"{").unwrap();
    let loaded = checkpoint::load(&path).unwrap();
    assert_eq!(loaded, Checkpoints::default());
    assert!(path.with_extension("json.corrupt").exists());
}

/// Savers that overlap (the periodic save still running at shutdown) each
/// write a whole file: the file always parses.
#[test]
fn overlapping_saves_never_tear_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = checkpoint::file_in(tmp.path());
    let cp = Arc::new(Mutex::new(Checkpoints::default()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (cp, path) = (cp.clone(), path.clone());
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    cp.lock().unwrap().advance(t * 1000 + i, Path::new("/x"), i);
                    checkpoint::save_shared(&path, &cp).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(checkpoint::load(&path).unwrap().files.len(), 200);
}
