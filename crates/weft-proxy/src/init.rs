//! `weft-proxy init`: traffic capture with iptables, run in the workload's
//! network namespace before the proxy starts (an init container on Kubernetes,
//! the pod setup of `weft up` locally).
//!
//! Two chains in the `nat` table:
//! - `WEFT_PROXY_INBOUND` (from PREROUTING): TCP arriving from outside is
//!   redirected to the inbound port, except skipped ports (admin, tap).
//! - `WEFT_PROXY_OUTBOUND` (from OUTPUT): TCP the workload opens is redirected
//!   to the outbound port, except the proxy's own traffic (by uid), loopback
//!   traffic and skipped ports.
//!
//! Installing flushes and refills the chains and adds each jump only if it is
//! missing, so running it twice leaves the same rules; `--remove` deletes them.

use std::process::Command;

use crate::config::PortSet;

pub const INBOUND_CHAIN: &str = "WEFT_PROXY_INBOUND";
pub const OUTBOUND_CHAIN: &str = "WEFT_PROXY_OUTBOUND";

/// iptables' multiport match takes at most 15 ports per rule.
const MULTIPORT_MAX: usize = 15;

#[derive(Clone, Debug, clap::Args)]
pub struct InitArgs {
    /// The uid the proxy runs as; its own connections are not redirected.
    #[arg(long, default_value_t = 2102)]
    pub proxy_uid: u32,
    /// Port of the proxy's inbound listener.
    #[arg(long, default_value_t = 4143)]
    pub inbound_port: u16,
    /// Port of the proxy's outbound listener.
    #[arg(long, default_value_t = 4140)]
    pub outbound_port: u16,
    /// Inbound ports not redirected (the proxy's admin and tap ports by default).
    #[arg(long, default_value = "4190,4191")]
    pub skip_inbound_ports: String,
    /// Outbound destination ports not redirected.
    #[arg(long, default_value = "")]
    pub skip_outbound_ports: String,
    /// Also program ip6tables (skipped with a note when ip6tables is absent).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub ipv6: bool,
    /// Remove the rules instead of installing them.
    #[arg(long)]
    pub remove: bool,
    /// Print the commands without running them.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("invalid --{flag}: {reason}")]
    BadFlag { flag: &'static str, reason: String },
    #[error(
        "{program} is not installed or not runnable ({source}); install it with: apt-get install iptables"
    )]
    Missing {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
}

/// One iptables invocation, without the program name.
type Rule = Vec<String>;

/// A rule written as iptables-save shows it (no word holds a space).
fn rule(line: &str) -> Rule {
    line.split_whitespace().map(String::from).collect()
}

/// `-p tcp -m multiport --dports a,b:c -j RETURN` rules for a port set.
fn skip_rules(chain: &str, ports: &str, flag: &'static str) -> Result<Vec<Rule>, InitError> {
    let set = PortSet::parse(ports).map_err(|reason| InitError::BadFlag { flag, reason })?;
    let specs: Vec<String> = set
        .ranges()
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}:{hi}")
            }
        })
        .collect();
    Ok(specs
        .chunks(MULTIPORT_MAX)
        .map(|chunk| {
            rule(&format!(
                "-t nat -A {chain} -p tcp -m multiport --dports {} -j RETURN",
                chunk.join(",")
            ))
        })
        .collect())
}

/// The rules that fill both chains, in order.
pub fn chain_rules(args: &InitArgs) -> Result<Vec<Rule>, InitError> {
    let mut rules = skip_rules(
        INBOUND_CHAIN,
        &args.skip_inbound_ports,
        "skip-inbound-ports",
    )?;
    let (inbound, outbound, uid) = (args.inbound_port, args.outbound_port, args.proxy_uid);
    rules.push(rule(&format!(
        "-t nat -A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {inbound}"
    )));
    // The proxy's own connections, and loopback, are never captured.
    rules.push(rule(&format!(
        "-t nat -A {OUTBOUND_CHAIN} -m owner --uid-owner {uid} -j RETURN"
    )));
    rules.push(rule(&format!("-t nat -A {OUTBOUND_CHAIN} -o lo -j RETURN")));
    rules.extend(skip_rules(
        OUTBOUND_CHAIN,
        &args.skip_outbound_ports,
        "skip-outbound-ports",
    )?);
    rules.push(rule(&format!(
        "-t nat -A {OUTBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {outbound}"
    )));
    Ok(rules)
}

const JUMPS: [(&str, &str); 2] = [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTBOUND_CHAIN)];

struct Iptables<'a> {
    program: &'a str,
    dry_run: bool,
}

impl Iptables<'_> {
    /// Runs one command (echoing it unless `quiet`). The outer error means
    /// iptables could not run at all; the inner one is iptables saying no,
    /// with its stderr.
    fn exec(&self, args: &[String], quiet: bool) -> Result<Result<(), String>, InitError> {
        let command = format!("{} -w {}", self.program, args.join(" "));
        if self.dry_run || !quiet {
            println!("{command}");
        }
        if self.dry_run {
            return Ok(Ok(()));
        }
        let out = Command::new(self.program)
            .arg("-w")
            .args(args)
            .output()
            .map_err(|source| InitError::Missing {
                program: self.program.to_string(),
                source,
            })?;
        Ok(if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        })
    }

    /// A command whose refusal is an answer (a rule to check or delete is absent).
    fn run(&self, args: &[String], quiet: bool) -> Result<bool, InitError> {
        Ok(self.exec(args, quiet)?.is_ok())
    }

    fn must(&self, args: &[String]) -> Result<(), InitError> {
        self.exec(args, false)?.map_err(|stderr| InitError::Failed {
            command: format!("{} {}", self.program, args.join(" ")),
            stderr,
        })
    }

    fn install(&self, rules: &[Rule]) -> Result<(), InitError> {
        for (_, chain) in JUMPS {
            // -N fails when the chain exists; either way it is then flushed.
            self.run(&rule(&format!("-t nat -N {chain}")), true)?;
            self.must(&rule(&format!("-t nat -F {chain}")))?;
        }
        for r in rules {
            self.must(r)?;
        }
        for (builtin, chain) in JUMPS {
            if self.dry_run || !self.run(&rule(&format!("-t nat -C {builtin} -j {chain}")), true)? {
                self.must(&rule(&format!("-t nat -A {builtin} -j {chain}")))?;
            }
        }
        Ok(())
    }

    fn remove(&self) -> Result<(), InitError> {
        for (builtin, chain) in JUMPS {
            // Delete every copy of the jump (bounded: a handful at most).
            for _ in 0..16 {
                if self.dry_run
                    || !self.run(&rule(&format!("-t nat -D {builtin} -j {chain}")), true)?
                {
                    break;
                }
            }
            self.run(&rule(&format!("-t nat -F {chain}")), true)?;
            self.run(&rule(&format!("-t nat -X {chain}")), true)?;
        }
        Ok(())
    }
}

fn available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn run(args: &InitArgs) -> Result<(), InitError> {
    let rules = chain_rules(args)?;
    let mut programs = vec!["iptables"];
    if args.ipv6 {
        if args.dry_run || available("ip6tables") {
            programs.push("ip6tables");
        } else {
            eprintln!("note: ip6tables not found; IPv6 traffic is not captured");
        }
    }
    for program in programs {
        let ipt = Iptables {
            program,
            dry_run: args.dry_run,
        };
        if args.remove {
            ipt.remove()?;
        } else {
            ipt.install(&rules)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: InitArgs,
    }

    fn args(extra: &[&str]) -> InitArgs {
        Cli::parse_from(std::iter::once("init").chain(extra.iter().copied())).args
    }

    #[test]
    fn rules_skip_the_proxy_uid_loopback_and_listed_ports() {
        let rules: Vec<String> = chain_rules(&args(&[
            "--proxy-uid",
            "7",
            "--skip-outbound-ports",
            "22,6000-6010",
        ]))
        .unwrap()
        .iter()
        .map(|r| r.join(" "))
        .collect();
        assert_eq!(
            rules,
            [
                "-t nat -A WEFT_PROXY_INBOUND -p tcp -m multiport --dports 4190,4191 -j RETURN",
                "-t nat -A WEFT_PROXY_INBOUND -p tcp -j REDIRECT --to-ports 4143",
                "-t nat -A WEFT_PROXY_OUTBOUND -m owner --uid-owner 7 -j RETURN",
                "-t nat -A WEFT_PROXY_OUTBOUND -o lo -j RETURN",
                "-t nat -A WEFT_PROXY_OUTBOUND -p tcp -m multiport --dports 22,6000:6010 -j RETURN",
                "-t nat -A WEFT_PROXY_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
            ]
        );
    }

    #[test]
    fn many_ports_are_split_and_bad_ports_named() {
        let ports: Vec<String> = (1000..1020).map(|p| p.to_string()).collect();
        let rules = chain_rules(&args(&["--skip-inbound-ports", &ports.join(",")])).unwrap();
        assert_eq!(
            rules
                .iter()
                .filter(|r| r.contains(&"multiport".to_string()))
                .count(),
            2
        );
        let err = chain_rules(&args(&["--skip-inbound-ports", "80,http"])).unwrap_err();
        assert!(err.to_string().contains("--skip-inbound-ports"), "{err}");
    }
}
