//! curl, the real client, as every test runs it: quiet but for errors,
//! capped in time, optionally inside a network namespace and as a uid.

use std::process::Command;

/// A curl run to make.
#[derive(Clone, Debug)]
pub struct Curl {
    args: Vec<String>,
    netns: Option<String>,
    uid: Option<u32>,
    max_time_secs: u32,
}

/// What curl did.
#[derive(Clone, Debug)]
pub struct CurlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CurlOutput {
    /// What a reader wants: stdout when curl succeeded, else its error.
    pub fn text(&self) -> &str {
        if self.success {
            &self.stdout
        } else {
            &self.stderr
        }
    }

    /// Everything curl printed, stdout then stderr.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl Curl {
    /// curl `-sS --max-time 60` with `args` (URL, options).
    pub fn new<S: AsRef<str>>(args: impl IntoIterator<Item = S>) -> Self {
        Curl {
            args: args.into_iter().map(|a| a.as_ref().to_string()).collect(),
            netns: None,
            uid: None,
            max_time_secs: 60,
        }
    }

    /// Runs it inside network namespace `ns` (`ip netns exec`).
    pub fn netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.to_string());
        self
    }

    /// Runs it as `uid` (and that group, no supplementary groups).
    pub fn uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    pub fn max_time(mut self, secs: u32) -> Self {
        self.max_time_secs = secs;
        self
    }

    fn command(&self) -> Command {
        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        if let Some(uid) = self.uid {
            let setpriv = format!("setpriv --reuid {uid} --regid {uid} --clear-groups");
            argv.extend(setpriv.split(' ').map(String::from));
        }
        argv.extend(["curl", "-sS", "--max-time"].map(String::from));
        argv.push(self.max_time_secs.to_string());
        argv.extend(self.args.iter().cloned());
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        command
    }

    /// Runs it, blocking.
    pub fn run(&self) -> CurlOutput {
        let out = self
            .command()
            .output()
            .expect("curl is installed (apt-get install curl)");
        CurlOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs it without blocking the test's runtime.
    pub async fn output(self) -> CurlOutput {
        tokio::task::spawn_blocking(move || self.run())
            .await
            .expect("the curl task ran")
    }

    /// Runs it and returns the HTTP status (0 when there was none) and the body.
    pub fn status_and_body(mut self) -> (u16, String) {
        self.args
            .splice(0..0, ["-w".to_string(), "\n%{http_code}".to_string()]);
        let out = self.run();
        let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

/// Runs curl with `args` (60 s cap); returns (exit success, stdout, stderr).
pub async fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Curl::new(args).output().await;
    (out.success, out.stdout, out.stderr)
}
