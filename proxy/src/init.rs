//! `remora-proxy init`: the iptables rules of transparent mode, as a pod's
//! init container installs them (linkerd-init and istio-init do the
//! same). In the `nat` table, two chains of our own: `REMORA_INBOUND`,
//! from `PREROUTING`, redirects the pod's inbound TCP to the inbound
//! listener; `REMORA_OUTBOUND`, from `OUTPUT`, redirects the app's
//! outbound TCP to the outbound listener (inbound, only the ports asked,
//! when asked: `inject` asks for the app's). The proxy's own connections
//! (by its uid), loopback, the admin port and the ports asked are left
//! alone. Run again, it flushes and refills its chains and adds no second
//! jump: the rules are the same however often it runs.

use std::process::{Command, ExitCode};

use crate::config::InitArgs;

pub const INBOUND_CHAIN: &str = "REMORA_INBOUND";
pub const OUTBOUND_CHAIN: &str = "REMORA_OUTBOUND";

/// One step of the rules, for one of `iptables` and `ip6tables`.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Create the chain unless it exists.
    Chain(&'static str),
    /// Run as it is.
    Run(Vec<String>),
    /// Append this rule unless it is there (`-C`, then `-A`).
    Once(Vec<String>),
}

/// The steps of one address family.
fn steps(args: &InitArgs) -> Vec<Step> {
    // `-A CHAIN` for TCP to `ports` (all when empty), then `target`.
    let tcp = |chain: &str, ports: &[u16], target: &[&str]| -> Step {
        let mut rule: Vec<String> = ["-t", "nat", "-A", chain, "-p", "tcp"]
            .map(String::from)
            .to_vec();
        if !ports.is_empty() {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            rule.extend(["-m", "multiport", "--dports"].map(String::from));
            rule.push(list.join(","));
        }
        rule.extend(target.iter().map(|s| s.to_string()));
        Step::Run(rule)
    };
    let rule = |chain: &str, rest: &[&str]| -> Step {
        Step::Run(
            ["-t", "nat", "-A", chain]
                .iter()
                .chain(rest)
                .map(|s| s.to_string())
                .collect(),
        )
    };
    let (inbound, outbound) = (
        args.inbound_port.to_string(),
        args.outbound_port.to_string(),
    );
    let uid = args.proxy_uid.to_string();
    let mut skip_inbound = vec![args.admin_port];
    skip_inbound.extend(&args.skip_inbound_ports);
    let mut steps = vec![
        Step::Chain(INBOUND_CHAIN),
        Step::Run(flush(INBOUND_CHAIN)),
        tcp(INBOUND_CHAIN, &skip_inbound, &["-j", "RETURN"]),
        tcp(
            INBOUND_CHAIN,
            &args.inbound_ports,
            &["-j", "REDIRECT", "--to-ports", &inbound],
        ),
        Step::Once(jump("PREROUTING", INBOUND_CHAIN)),
        Step::Chain(OUTBOUND_CHAIN),
        Step::Run(flush(OUTBOUND_CHAIN)),
        // The proxy's own connections go where they are sent.
        rule(
            OUTBOUND_CHAIN,
            &["-m", "owner", "--uid-owner", &uid, "-j", "RETURN"],
        ),
        // Loopback: the app's calls to itself, and to this sidecar.
        rule(OUTBOUND_CHAIN, &["-o", "lo", "-j", "RETURN"]),
    ];
    if !args.skip_outbound_ports.is_empty() {
        steps.push(tcp(
            OUTBOUND_CHAIN,
            &args.skip_outbound_ports,
            &["-j", "RETURN"],
        ));
    }
    steps.push(tcp(
        OUTBOUND_CHAIN,
        &[],
        &["-j", "REDIRECT", "--to-ports", &outbound],
    ));
    steps.push(Step::Once(jump("OUTPUT", OUTBOUND_CHAIN)));
    steps
}

fn flush(chain: &str) -> Vec<String> {
    ["-t", "nat", "-F", chain].map(String::from).to_vec()
}

/// The jump from a built-in chain to ours, without its `-A`/`-C`.
fn jump(from: &str, to: &str) -> Vec<String> {
    ["-t", "nat", from, "-p", "tcp", "-j", to]
        .map(String::from)
        .to_vec()
}

/// `args` with `-A` or `-C` before the chain (the third word).
fn with_op(args: &[String], op: &str) -> Vec<String> {
    let mut v = args.to_vec();
    v.insert(2, op.to_string());
    v
}

/// A step as the shell line that does it.
fn shell(program: &str, step: &Step) -> String {
    match step {
        Step::Chain(chain) => format!("{program} -t nat -N {chain} 2>/dev/null || true"),
        Step::Run(args) => format!("{program} {}", args.join(" ")),
        Step::Once(args) => format!(
            "{program} {} 2>/dev/null || {program} {}",
            with_op(args, "-C").join(" "),
            with_op(args, "-A").join(" ")
        ),
    }
}

fn run_step(program: &str, step: &Step) -> Result<(), String> {
    let status = |args: &[String]| {
        Command::new(program)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))
    };
    let must = |args: &[String]| -> Result<(), String> {
        let out = status(args)?;
        match out.status.success() {
            true => Ok(()),
            false => Err(format!(
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    };
    match step {
        Step::Chain(chain) => {
            let list = ["-t", "nat", "-n", "-L", chain].map(String::from);
            if status(&list)?.status.success() {
                return Ok(());
            }
            must(&["-t", "nat", "-N", chain].map(String::from))
        }
        Step::Run(args) => must(args),
        Step::Once(args) => {
            if status(&with_op(args, "-C"))?.status.success() {
                return Ok(());
            }
            must(&with_op(args, "-A"))
        }
    }
}

/// The most ports one `-m multiport` rule matches.
const MULTIPORT_MAX: usize = 15;

/// Where the kernel lists its IPv6 addresses: absent when it has no IPv6
/// (booted with `ipv6.disable=1`), where ip6tables has nothing to set.
const IPV6_ADDRESSES: &str = "/proc/net/if_inet6";

pub fn run(args: &InitArgs) -> ExitCode {
    // iptables' multiport match takes at most 15 ports.
    for (flag, ports) in [
        ("--inbound-ports", args.inbound_ports.len()),
        ("--skip-inbound-ports", args.skip_inbound_ports.len() + 1),
        ("--skip-outbound-ports", args.skip_outbound_ports.len()),
    ] {
        if ports > MULTIPORT_MAX {
            eprintln!("remora-proxy init: {flag} names more ports than iptables can match in one rule ({MULTIPORT_MAX}, the admin port included in --skip-inbound-ports)");
            return ExitCode::FAILURE;
        }
    }
    let mut programs = vec!["iptables"];
    match (args.no_ipv6, std::path::Path::new(IPV6_ADDRESSES).exists()) {
        (false, true) => programs.push("ip6tables"),
        (false, false) => {
            eprintln!("remora-proxy init: this kernel has no IPv6 ({IPV6_ADDRESSES} is absent): IPv4 rules only")
        }
        (true, _) => {}
    }
    let steps = steps(args);
    for program in programs {
        for step in &steps {
            if args.dry_run {
                println!("{}", shell(program, step));
                continue;
            }
            if let Err(e) = run_step(program, step) {
                eprintln!("remora-proxy init: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if !args.dry_run {
        let inbound = match args.inbound_ports.is_empty() {
            true => "inbound TCP".to_string(),
            false => format!("inbound TCP to ports {:?}", args.inbound_ports),
        };
        eprintln!(
            "remora-proxy init: {inbound} redirected to port {}, outbound to port {}, except uid {}'s",
            args.inbound_port, args.outbound_port, args.proxy_uid
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::{Cli, Command};

    fn init_args(args: &[&str]) -> InitArgs {
        let cli = Cli::try_parse_from(["remora-proxy", "init"].iter().chain(args)).unwrap();
        match cli.command {
            Some(Command::Init(args)) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_rules_skip_the_proxy_loopback_and_the_ports_asked() {
        let args = init_args(&[
            "--skip-outbound-ports",
            "5432,6379",
            "--skip-inbound-ports",
            "22",
        ]);
        let lines: Vec<String> = steps(&args).iter().map(|s| shell("iptables", s)).collect();
        let script = lines.join("\n");
        for want in [
            "iptables -t nat -N REMORA_INBOUND 2>/dev/null || true",
            "iptables -t nat -A REMORA_INBOUND -p tcp -m multiport --dports 4191,22 -j RETURN",
            "iptables -t nat -A REMORA_INBOUND -p tcp -j REDIRECT --to-ports 4143",
            "iptables -t nat -C PREROUTING -p tcp -j REMORA_INBOUND 2>/dev/null || iptables -t nat -A PREROUTING -p tcp -j REMORA_INBOUND",
            "iptables -t nat -A REMORA_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
            "iptables -t nat -A REMORA_OUTBOUND -o lo -j RETURN",
            "iptables -t nat -A REMORA_OUTBOUND -p tcp -m multiport --dports 5432,6379 -j RETURN",
            "iptables -t nat -A REMORA_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
        ] {
            assert!(script.contains(want), "{want}\nnot in\n{script}");
        }
        // Each chain is flushed before it is filled: running again leaves
        // the same rules.
        let flush = script.find("-F REMORA_OUTBOUND").unwrap();
        assert!(flush < script.find("--uid-owner").unwrap());
    }

    #[test]
    fn inbound_ports_asked_are_the_only_ones_redirected() {
        let args = init_args(&["--inbound-ports", "8080,9000"]);
        let script: Vec<String> = steps(&args).iter().map(|s| shell("iptables", s)).collect();
        let inbound: Vec<&String> = script
            .iter()
            .filter(|l| l.contains("-A REMORA_INBOUND"))
            .collect();
        assert_eq!(
            inbound,
            [
                "iptables -t nat -A REMORA_INBOUND -p tcp -m multiport --dports 4191 -j RETURN",
                "iptables -t nat -A REMORA_INBOUND -p tcp -m multiport --dports 8080,9000 -j REDIRECT --to-ports 4143",
            ]
        );
    }
}
