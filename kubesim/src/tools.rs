//! Programs the tests run (a JDK, Go, Ruby, ClickHouse, Chromium) come
//! from Debian: on the PATH, or installed when missing and running as root,
//! as CI runs.

use std::process::Command;

/// Whether `cmd` is on the PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Makes sure `cmd` is on the PATH, installing Debian's `package` when it
/// is missing and this runs as root. The error says what to install.
pub fn ensure(cmd: &str, package: &str) -> Result<(), String> {
    if have(cmd) {
        return Ok(());
    }
    if root() {
        let ok = Command::new("sh")
            .args([
                "-c",
                &format!("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package} >/dev/null"),
            ])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!("installing Debian's {package} failed"));
        }
    }
    if have(cmd) {
        Ok(())
    } else {
        Err(format!("{cmd} is needed: apt-get install {package}"))
    }
}
