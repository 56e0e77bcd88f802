//! `unbrick`: command-line interface and wiring. Protocol and domain logic live in the workspace
//! crates; this file only parses flags, merges configuration and calls them.
// missing_docs is for library crates: a binary exports nothing.
#![allow(missing_docs)]
#![forbid(unsafe_code)]

mod cli;
mod client;
mod commands;
mod config;
mod demo;
mod doctor;
mod init;
mod kernel;
mod progress;
mod serve;
mod settings;

/// jemalloc instead of glibc malloc: see Cargo.toml (resident size under a long soak).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::Parser;
use cli::{Cli, Cmd};
use std::process::ExitCode;

/// No clock that reads earlier than this (2026-01-01) is right: unbrick did not exist yet.
pub fn build_floor() -> u64 {
    1_767_225_600
}

pub fn now_unix() -> u64 {
    fleet_service::now_ms() / 1000
}

pub fn image_version_now() -> String {
    let t = signing::time::format_utc(now_unix());
    // 2026-11-21T11:23:17Z -> 2026.1121.112317
    let d: String = t.chars().filter(char::is_ascii_digit).collect();
    format!("{}.{}.{}", &d[0..4], &d[4..8], &d[8..14])
}

/// Errors the admin must fix; printed on one line (or a short list), exit code 2 (1 when made
/// by [`Fail::found`]).
struct Fail(String);

/// Set when a check ran and found a problem: the exit code is then 1, not 2.
static FOUND: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Fail {
    /// A check ran and found a problem (exit code 1; see [`cli::EXIT_CODES`]).
    fn found(msg: String) -> Self {
        FOUND.store(true, std::sync::atomic::Ordering::Relaxed);
        Self(msg)
    }
}

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Self(e.to_string())
    }
}

/// Man pages, one per command and subcommand (`unbrick-image-build.1`), and completions.
fn dist_files(out: &std::path::Path) -> Result<(), Fail> {
    use clap::CommandFactory;
    let man = out.join("man");
    let comp = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&comp)?;
    fn pages(cmd: &clap::Command, name: &str, dir: &std::path::Path) -> Result<usize, Fail> {
        let cmd = cmd.clone().name(name.to_string());
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.1")), buf)?;
        let mut n = 1;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            n += pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(n)
    }
    let mut cmd = Cli::command();
    cmd.build();
    let n = pages(&cmd, "unbrick", &man)?;
    for (shell, file) in [
        (clap_complete::Shell::Bash, "unbrick"),
        (clap_complete::Shell::Zsh, "_unbrick"),
        (clap_complete::Shell::Fish, "unbrick.fish"),
    ] {
        let mut f = std::fs::File::create(comp.join(file))?;
        clap_complete::generate(shell, &mut Cli::command(), "unbrick", &mut f);
    }
    println!(
        "wrote {n} man pages to {} and completions (bash, zsh, fish) to {}",
        man.display(),
        comp.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let cli = Cli::parse();
    // Offline commands run as root on the service's data directory hand what they wrote back
    // to the service user.
    let hand_back = !matches!(cli.cmd, Cmd::Serve(_) | Cmd::Demo(_));
    let dir = config::data_dir_of(&args);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UNBRICK_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let r = match cli.cmd {
        Cmd::Init {
            data_dir,
            signing_key,
        } => init::run(&data_dir, signing_key.as_deref()).map_err(Fail),
        Cmd::Serve(a) => serve::run(a),
        Cmd::Doctor(a) => doctor::cli(a),
        Cmd::Keys(k) => commands::keys(k),
        Cmd::Image(i) => commands::image(i),
        Cmd::Rules(r) => commands::rules(r),
        Cmd::Hosts(h) => client::hosts(h),
        Cmd::Tokens(t) => commands::tokens(t),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Campaign(c) => client::campaign(c),
        Cmd::Bmc(b) => client::bmc(b),
        Cmd::Diagnose {
            target,
            json,
            draft_rule: Some(sha),
            path,
            out,
            hosts_out,
        } => client::draft_rule(
            &target,
            &sha,
            path.as_deref(),
            (out.as_deref(), hosts_out.as_deref()),
            json,
        ),
        Cmd::Diagnose { target, json, .. } => client::diagnose(&target, json),
        Cmd::DistFiles { out } => dist_files(&out),
    };
    if hand_back {
        config::hand_back(&dir);
    }
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg)) => {
            eprintln!("unbrick: error: {msg}");
            if FOUND.load(std::sync::atomic::Ordering::Relaxed) {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
    }
}
