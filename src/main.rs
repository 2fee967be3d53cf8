//! The `agentgate` command: parse the CLI, load the config, call the library, map errors to
//! exit codes. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use agentgate::config::Config;
use agentgate::{agent_env, app, challenges_cli, tls};
use clap::{Parser, Subcommand};

/// The process's allocator (see the note on `mimalloc` in Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "agentgate",
    version,
    about = "A zero-trust egress gate for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gate (creates the CA and data dir when missing).
    Run {
        /// Config file (default: ./agentgate.toml if present, else built-in defaults).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show the gate at work: the shipped policy, local stand-ins for GitHub and Gmail, and a
    /// scripted agent trying ten actions through it, each outcome narrated.
    Demo {
        /// Approve every held request at once (unattended runs).
        #[arg(long, conflicts_with = "deny_all")]
        approve_all: bool,
        /// Deny every held request at once (unattended runs).
        #[arg(long)]
        deny_all: bool,
        /// The directory for the demo's config, CA, policy and data (default: a new directory
        /// under the system's temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Manage the local CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Print `export` lines that point an agent at the gate: eval "$(agentgate env)".
    Env {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The agent whose credentials go into the proxy URL.
        #[arg(long)]
        agent: Option<String>,
    },
    /// Read one raw HTTP/1.1 request on standard input; print its actions and the decision.
    Classify {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Export or verify the audit log (works whether or not the gate runs).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Manage agents.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Check, test and explain policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// List the running gate's step-up challenges (pending ones unless --state says otherwise).
    #[command(after_help = REVIEW_HELP)]
    Challenges {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Which challenges: a state, or `all`.
        #[arg(long, default_value = "pending", value_parser = [
            "pending", "approved", "denied", "expired", "abandoned", "interrupted", "redeemed", "all",
        ])]
        state: String,
        /// Print a JSON array of the challenges (as the API gives them) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Approve a held request: the gate decides it again with the approval and forwards it.
    #[command(after_help = REVIEW_HELP)]
    Approve {
        /// The challenge id (`chl_...`, from `agentgate challenges`).
        id: String,
        /// Why; stored with the decision in the audit log.
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Deny a held request: the agent gets 403 with the note.
    #[command(after_help = REVIEW_HELP)]
    Deny {
        /// The challenge id (`chl_...`, from `agentgate challenges`).
        id: String,
        /// Why; the agent sees it, and it is stored in the audit log.
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// How the reviewer commands reach the gate, and their exit codes.
const REVIEW_HELP: &str = "\
The command talks to the running gate's dashboard (dashboard.listen of the config) with the
reviewer token from AGENTGATE_REVIEWER_TOKEN, else from reviewer.token in the data directory.

Exit codes: 0 done; 1 other error; 2 usage; 3 no gate answers at dashboard.listen;
4 no reviewer token, or the gate refused it; 5 no such challenge; 6 already decided.";

#[derive(Subcommand)]
enum AuditCommand {
    /// Print records as JSON lines (each line's SHA-256 is the next record's `prev`).
    Export {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Records at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Records before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        agent: Option<String>,
        /// Decisions with an action matching this pattern (e.g. `github.repos.*`).
        #[arg(long)]
        action: Option<String>,
        /// allow, block, step_up, ...
        #[arg(long)]
        decision: Option<String>,
    },
    /// Walk the hash chain; exit 1 and name the first broken link if there is one.
    Verify {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Print a fresh random token for agent NAME and the config lines to add.
    New {
        name: String,
        /// The vault identity whose tokens the agent borrows.
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Parse, type-check and lint; errors as file:line:col: message; exit 1 on error.
    Check {
        /// The policy directory (default: the config's paths.policies).
        dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run every `test` block; exit 1 on any failure.
    Test {
        dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Read an action as JSON on standard input ({"action": .., "params": {..}, "agent": ..},
    /// or the output of `agentgate classify`); print the decision and every rule's clauses.
    Explain {
        dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create the local CA (never overwrites an existing one).
    Init {
        /// Directory for ca.pem and ca-key.pem (default: the config's paths.certs).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the CA certificate's path and SHA-256 fingerprint.
    Show {
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo narrates each request itself; the gate's own lines would repeat it.
    let level = match cli.command {
        Command::Demo { .. } => "agentgate=warn",
        _ => "agentgate=info",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            eprintln!("agentgate: {message}");
            ExitCode::from(code)
        }
    }
}

/// A command's error message and exit code (1 unless the command has its own codes).
struct Failure {
    code: u8,
    message: String,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure { code: 1, message }
    }
}

impl From<challenges_cli::CliError> for Failure {
    fn from(e: challenges_cli::CliError) -> Failure {
        Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

/// `agentgate challenges`, `approve`, `deny`: through the running gate's API.
fn review(config: Option<PathBuf>, review: Review) -> Result<(), Failure> {
    let target = challenges_cli::Target::load(config.as_deref())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let text = runtime.block_on(async {
        match review {
            Review::List { state, json } => {
                let state =
                    match state.as_str() {
                        "all" => None,
                        s => Some(agentgate::holds::State::parse(s).ok_or_else(|| {
                            challenges_cli::CliError::Other(format!("no state {s}"))
                        })?),
                    };
                challenges_cli::list(&target, state, json, agentgate::decider::now_ms()).await
            }
            Review::Decide { id, verdict, note } => {
                challenges_cli::decide(&target, &id, verdict, note.as_deref()).await
            }
        }
    })?;
    out(&text);
    Ok(())
}

enum Review {
    List {
        state: String,
        json: bool,
    },
    Decide {
        id: String,
        verdict: challenges_cli::Verdict,
        note: Option<String>,
    },
}

fn policy(command: PolicyCommand) -> Result<(), String> {
    use agentgate::policy_cli;
    let (dir, config) = match &command {
        PolicyCommand::Check { dir, config }
        | PolicyCommand::Test { dir, config }
        | PolicyCommand::Explain { dir, config } => (dir.clone(), config.clone()),
    };
    let dir = match dir {
        Some(d) => d,
        None => load(config)?.policies_dir,
    };
    let report = match command {
        PolicyCommand::Check { .. } => policy_cli::check(&dir),
        PolicyCommand::Test { .. } => policy_cli::test(&dir),
        PolicyCommand::Explain { .. } => {
            let mut input = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut input)
                .map_err(|e| format!("cannot read standard input: {e}"))?;
            policy_cli::explain(&dir, &input, agentgate::decider::now_ms())
        }
    };
    if report.ok {
        out(&report.text);
        Ok(())
    } else {
        Err(report.text)
    }
}

/// Prints a result on standard output; a reader that went away (`| head`) is not an error.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
}

fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Challenges {
            config,
            state,
            json,
        } => review(config, Review::List { state, json }),
        Command::Approve { id, note, config } => review(
            config,
            Review::Decide {
                id,
                verdict: challenges_cli::Verdict::Approve,
                note,
            },
        ),
        Command::Deny { id, note, config } => review(
            config,
            Review::Decide {
                id,
                verdict: challenges_cli::Verdict::Deny,
                note,
            },
        ),
        Command::Run { config } => {
            let config = load(config)?;
            let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            // The signal handlers are installed before the gate starts (and prints its banner).
            let shutdown = {
                let _runtime = runtime.enter();
                shutdown_signal()
            };
            runtime
                .block_on(app::run(&config, shutdown))
                .map_err(|e| e.to_string().into())
        }
        Command::Demo {
            approve_all,
            deny_all,
            dir,
        } => {
            use agentgate::demo;
            let review = match (approve_all, deny_all) {
                (true, _) => demo::Review::ApproveAll,
                (_, true) => demo::Review::DenyAll,
                _ => demo::Review::Person,
            };
            let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            runtime
                .block_on(demo::run(demo::Options { review, dir }))
                .map(|_| ())
                .map_err(Failure::from)
        }
        Command::Ca { command } => match command {
            CaCommand::Init { dir, config } => {
                let dir = certs_dir(dir, config)?;
                let ca = tls::ca::create(&dir).map_err(|e| e.to_string())?;
                println!(
                    "created {} (SHA-256 {})",
                    ca.cert_path.display(),
                    ca.fingerprint()
                );
                Ok(())
            }
            CaCommand::Show { dir, config } => {
                let dir = certs_dir(dir, config)?;
                let ca = tls::ca::load(&dir).map_err(|e| e.to_string())?;
                println!("{}\nSHA-256 {}", ca.cert_path.display(), ca.fingerprint());
                Ok(())
            }
        },
        Command::Policy { command } => Ok(policy(command)?),
        Command::Audit { command } => {
            let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            match command {
                AuditCommand::Export {
                    config,
                    since,
                    until,
                    agent,
                    action,
                    decision,
                } => {
                    let config = load(config)?;
                    let args = agentgate::audit_cli::FilterArgs {
                        since,
                        until,
                        agent,
                        action,
                        decision,
                    };
                    let mut stdout = std::io::stdout().lock();
                    Ok(runtime.block_on(agentgate::audit_cli::export(
                        &config,
                        &args,
                        &mut stdout,
                    ))?)
                }
                AuditCommand::Verify { config } => {
                    let config = load(config)?;
                    let text = runtime.block_on(agentgate::audit_cli::verify(&config))?;
                    out(&text);
                    Ok(())
                }
            }
        }
        Command::Agent {
            command: AgentCommand::New { name, user },
        } => {
            out(&agentgate::agents::new_agent_text(&name, user.as_deref())
                .map_err(|e| e.to_string())?);
            Ok(())
        }
        Command::Classify { config } => {
            let config = load(config)?;
            let schema = agentgate::policy::schema::Schema::builtin();
            let active = agentgate::policy::Active::new();
            if let Err(e) = agentgate::policy_files::reload(&config.policies_dir, &schema, &active)
            {
                eprintln!(
                    "agentgate: the policies did not load; the decision is the block every request gets:\n{e}"
                );
            }
            let catalog =
                agentgate::actions::catalog::Catalog::builtin(config.github_enterprise.clone())
                    .map_err(|e| e.to_string())?;
            let mut raw = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut raw)
                .map_err(|e| format!("cannot read standard input: {e}"))?;
            let report = agentgate::classify::classify_raw(&config, &catalog, &active, &raw)
                .map_err(|e| e.to_string())?;
            let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
            out(&text);
            Ok(())
        }
        Command::Env { config, agent } => {
            let config = load(config)?;
            let (name, token) = agent_env::credentials(
                &config,
                agent.as_deref(),
                std::env::var(agent_env::TOKEN_VAR).ok(),
            )?;
            let (ca, _) = tls::ca::ensure(&config.certs_dir).map_err(|e| e.to_string())?;
            let bundle =
                tls::ca::write_bundle(&config.certs_dir, &ca).map_err(|e| e.to_string())?;
            let bundle = std::path::absolute(&bundle).unwrap_or(bundle);
            print!(
                "{}",
                agent_env::export_lines(
                    config.proxy_listen,
                    config.dashboard_listen,
                    Some((&name, &token)),
                    &bundle,
                    &config.placeholders,
                )
            );
            Ok(())
        }
    }
}

fn load(config: Option<PathBuf>) -> Result<Config, String> {
    Config::load_or_default(config.as_deref()).map_err(|e| e.to_string())
}

fn certs_dir(dir: Option<PathBuf>, config: Option<PathBuf>) -> Result<PathBuf, String> {
    match dir {
        Some(d) => Ok(d),
        None => Ok(load(config)?.certs_dir),
    }
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed by this call (inside the
/// runtime), not when the future is first polled: a signal sent as soon as the banner is out
/// stops the gate cleanly instead of killing it with the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(int) => {},
                () = wait(term) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
