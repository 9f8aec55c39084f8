//! Real stack traces, made by running small programs in Python, Java, Go
//! and Ruby: written in CRI format as a runtime writes them, with the
//! program's stdout lines interleaved between the trace's lines and one
//! trace line split into `P`/`F` chunks (CRI-O's partial writes), then
//! read by the agent's framer, assembler and multi-line grouper. Every
//! trace must come out as one record equal to what the program printed,
//! and every other line on its own.
//!
//! The interpreters come from Debian (`python3`, `default-jdk-headless`,
//! `golang-go`, `ruby`); the test installs a missing one when it runs as
//! root, as CI does.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use logfleet_agent::cri::{Assembler, Framer, Line, Oddities};
use logfleet_agent::multiline::{Detector, GroupConfig, Grouper};

/// `cmd` on the PATH (Debian's `package` installed when missing).
fn need(cmd: &str, package: &str) {
    if let Err(e) = logfleet_kubesim::tools::ensure(cmd, package) {
        panic!("this test needs {cmd}: {e}");
    }
}

/// Runs a program; returns its stdout lines and its stderr (the trace).
fn run(dir: &Path, program: &[&str], env: &[(&str, &str)]) -> (Vec<String>, String) {
    let out = Command::new(program[0])
        .args(&program[1..])
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("running {program:?}: {e}"));
    assert!(!out.status.success(), "{program:?} was meant to fail");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    (
        stdout.lines().map(str::to_owned).collect(),
        stderr.trim_end_matches('\n').to_owned(),
    )
}

/// The CRI file a runtime writes: a plain line before the trace, the
/// trace on stderr with the stdout lines between its lines, its third
/// line in two `P`/`F` chunks, a plain line after.
fn cri_file(stdout: &[String], trace: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ns = 0u64;
    let mut rec = |stream: &str, tag: char, msg: &str| {
        ns += 1_000;
        out.extend_from_slice(
            format!("2026-12-03T10:00:00.{ns:09}Z {stream} {tag} {msg}\n").as_bytes(),
        );
    };
    rec("stderr", 'F', "INFO starting");
    let mut outs = stdout.iter();
    for (i, line) in trace.lines().enumerate() {
        if i == 2 && line.len() > 4 {
            let (a, b) = line.split_at(4);
            rec("stderr", 'P', a);
            if let Some(o) = outs.next() {
                rec("stdout", 'F', o);
            }
            rec("stderr", 'F', b);
        } else {
            rec("stderr", 'F', line);
        }
        if let Some(o) = outs.next() {
            rec("stdout", 'F', o);
        }
    }
    for o in outs {
        rec("stdout", 'F', o);
    }
    rec("stderr", 'F', "INFO next request");
    out
}

/// Reads `data` in small pieces through the agent's pipeline.
fn read(data: &[u8], detector: &str) -> Vec<Line> {
    let mut framer = Framer::new(0, 1 << 20);
    let mut asm = Assembler::new(0, 1 << 20);
    let mut group = Grouper::new(
        Detector::parse(detector).unwrap().unwrap(),
        GroupConfig::default(),
    );
    let mut odd = Oddities::default();
    let mut out: Vec<Line> = Vec::new();
    let now = Instant::now();
    for chunk in data.chunks(37) {
        let mut sink = group.sink(&mut out, now);
        framer.feed(chunk, |rec, end| {
            asm.feed(rec, end, now, 0, &mut odd, &mut sink)
        });
    }
    group.flush_all(&mut out);
    assert_eq!(odd, Oddities::default());
    out
}

fn check(lang: &str, stdout: &[String], trace: &str) {
    assert!(
        trace.lines().count() >= 3,
        "{lang}: a short trace:\n{trace}"
    );
    let data = cri_file(stdout, trace);
    for detector in [lang, "auto"] {
        let lines = read(&data, detector);
        let texts: Vec<String> = lines
            .iter()
            .map(|l| String::from_utf8_lossy(&l.text).into_owned())
            .collect();
        let whole = texts.iter().filter(|t| t.as_str() == trace).count();
        assert_eq!(
            whole, 1,
            "{lang} with {detector}: the trace is not one record:\n{texts:#?}\nwanted:\n{trace}"
        );
        // Everything else stays as it was written, line by line.
        let mut rest: Vec<&str> = texts
            .iter()
            .filter(|t| t.as_str() != trace)
            .map(String::as_str)
            .collect();
        rest.sort_unstable();
        let mut want: Vec<&str> = stdout.iter().map(String::as_str).collect();
        want.extend(["INFO starting", "INFO next request"]);
        want.sort_unstable();
        assert_eq!(rest, want, "{lang} with {detector}");
        // The record sits at the offset of its first line's record.
        let first = lines.iter().find(|l| l.text == trace.as_bytes()).unwrap();
        let needle = format!(" F {}\n", trace.lines().next().unwrap());
        let at = data
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap();
        let record_start = data[..at]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        assert_eq!(
            first.offset, record_start as u64,
            "{lang}: the record's offset"
        );
    }
}

#[test]
fn python_traceback_with_a_chained_cause() {
    need("python3", "python3");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("app.py"),
        "import sys\n\
         def charge(card):\n    return {'ok': True}[card]\n\
         def checkout():\n    for i in range(3):\n        print(f'py request {i}', flush=True)\n    \
         try:\n        charge('declined')\n    except KeyError as e:\n        raise RuntimeError('payment failed') from e\n\
         checkout()\n",
    )
    .unwrap();
    let (out, trace) = run(dir.path(), &["python3", "app.py"], &[]);
    assert!(trace.starts_with("Traceback (most recent call last):"));
    assert!(trace.contains("The above exception was the direct cause"));
    check("python", &out, &trace);
}

#[test]
fn java_exception_with_cause_and_more() {
    need("javac", "default-jdk-headless");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("App.java"),
        "public class App {\n\
           static void charge(String card) { throw new IllegalArgumentException(\"declined: \" + card); }\n\
           static void checkout() {\n\
             try { charge(\"4242\"); } catch (IllegalArgumentException e) { throw new IllegalStateException(\"payment failed\", e); }\n\
           }\n\
           public static void main(String[] a) {\n\
             for (int i = 0; i < 3; i++) System.out.println(\"java request \" + i);\n\
             System.out.flush();\n\
             checkout();\n\
           }\n\
         }\n",
    )
    .unwrap();
    let javac = Command::new("javac")
        .arg("App.java")
        .current_dir(dir.path())
        .status()
        .expect("javac");
    assert!(javac.success());
    let (out, trace) = run(dir.path(), &["java", "-cp", ".", "App"], &[]);
    assert!(trace.contains("Caused by: java.lang.IllegalArgumentException"));
    assert!(trace.contains("\t... 2 more"), "{trace}");
    check("java", &out, &trace);
}

#[test]
fn go_panic_with_every_goroutine() {
    need("go", "golang-go");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("main.go"),
        "package main\n\nimport \"fmt\"\n\n\
         func worker(c chan int) { <-c }\n\n\
         func charge(card string) { panic(\"declined: \" + card) }\n\n\
         func main() {\n\
         \tc := make(chan int)\n\
         \tgo worker(c)\n\
         \tfor i := 0; i < 3; i++ {\n\t\tfmt.Printf(\"go request %d\\n\", i)\n\t}\n\
         \tcharge(\"4242\")\n}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("go.mod"), "module app\n\ngo 1.19\n").unwrap();
    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    let build = Command::new("go")
        .args(["build", "-o", "app", "."])
        .current_dir(dir.path())
        .env("GOCACHE", cache)
        .env("GOPATH", cache)
        .env("GOFLAGS", "-mod=mod")
        .status()
        .expect("go build");
    assert!(build.success());
    let (out, trace) = run(dir.path(), &["./app"], &[("GOTRACEBACK", "all")]);
    assert!(trace.starts_with("panic: declined: 4242"));
    assert!(trace.matches("goroutine ").count() >= 2, "{trace}");
    check("go", &out, &trace);
}

#[test]
fn ruby_error_with_its_backtrace() {
    need("ruby", "ruby");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("app.rb"),
        "def charge(card)\n  raise ArgumentError, \"declined: #{card}\"\nend\n\
         def checkout\n  charge('4242')\nend\n\
         3.times { |i| puts \"ruby request #{i}\" }\n$stdout.flush\ncheckout\n",
    )
    .unwrap();
    let (out, trace) = run(dir.path(), &["ruby", "app.rb"], &[]);
    assert!(trace.contains("from app.rb"), "{trace}");
    check("ruby", &out, &trace);
}
