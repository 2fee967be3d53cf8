//! Composition root: builds every component from the [`Config`], binds, runs, shuts down.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::actions::catalog::Catalog;
use crate::audit::Audit;
use crate::config::Config;
use crate::counters::Counters;
use crate::dashboard::{self, DashboardState, reviewers::Reviewers};
use crate::decider::Decider;
use crate::holds::{HoldLimits, Holds};
use crate::policy::Active;
use crate::policy::schema::Schema;
use crate::policy_files;
use crate::proxy::forward::{Dialer, Forwarder};
use crate::proxy::{ProxyState, listener};
use crate::tls::{self, TlsError, ca, issuer::LeafIssuer};

/// Why the gate could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source} (is another gate running? set proxy.listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Table(#[from] crate::actions::routes::TableError),
    #[error("cannot open the state store in {path}: {source}")]
    Store {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Agents(#[from] crate::agents::AgentsError),
    #[error("vault: {0}")]
    Vault(#[from] crate::vault::VaultError),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A running gate.
#[derive(Debug)]
pub struct Gate {
    /// Where the proxy listens (the bound address, useful with port 0).
    pub proxy_addr: SocketAddr,
    /// Where the dashboard (reviewer API, `/metrics`) listens.
    pub dashboard_addr: SocketAddr,
    /// The CA certificate agents must trust.
    pub ca_cert: PathBuf,
    /// System roots plus the CA, for agents' CA-bundle variables.
    pub bundle: PathBuf,
    /// Whether this start created the CA.
    pub created_ca: bool,
    /// The active policy set (tests reload and inspect it).
    pub policy: Arc<Active>,
    issuer: Arc<LeafIssuer>,
    watcher: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// Closed on shutdown: the step-up tasks still waiting end (see [`Holds::close`]).
    holds: Holds,
    /// Closed on shutdown, after the listener: a gate started next on the same data
    /// directory takes over the store even while tasks of this one linger.
    audit: Arc<Audit>,
}

impl Gate {
    /// How many leaf certificates this gate has issued (tests, diagnostics).
    pub fn certificates_issued(&self) -> u64 {
        self.issuer.issued()
    }

    /// Stops accepting connections and waits for the listener to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        self.watcher.abort();
        self.holds.close();
        self.audit.close();
    }
}

/// Builds every component, binds the proxy, and starts serving in the background.
pub async fn start(config: &Config) -> Result<Gate, AppError> {
    make_private_dir(&config.data_dir)?;
    ensure_policies(&config.policies_dir)?;
    let schema = Arc::new(Schema::builtin());
    let active = Arc::new(Active::new());
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let loaded = policy_files::reload(&config.policies_dir, &schema, &active);
    metrics.policy_reload(loaded.is_ok());
    if let Err(e) = loaded {
        eprintln!(
            "agentgate: the policies in {} did not load; every request is blocked until they do:\n{e}",
            config.policies_dir.display()
        );
    }
    let (counters, audit, holds) = open_state(
        &config.data_dir,
        config.audit_retention,
        config.step_up_window,
    )?;
    let counters = Arc::new(counters);
    let audit = Arc::new(audit);
    record_interrupted(&audit, &holds).await;
    let decider = Arc::new(Decider::new(active.clone(), counters.clone()));
    let watch = policy_files::watch(
        config.policies_dir.clone(),
        schema,
        active.clone(),
        policy_files::RELOAD_INTERVAL,
        Some(metrics.clone()),
    );
    let pruned_audit = audit.clone();
    let expiring = holds.clone();
    let (retained, retention) = (holds.clone(), config.step_up_retention);
    let closing = holds.clone();
    let watcher = tokio::spawn(async move {
        tokio::join!(
            watch,
            prune_counters(counters),
            prune_audit(pruned_audit),
            expire_holds(expiring),
            prune_holds(retained, retention)
        );
    });
    let (ca, created_ca) = ca::ensure(&config.certs_dir)?;
    let bundle = ca::write_bundle(&config.certs_dir, &ca)?;
    let ca_cert = ca.cert_path.clone();
    let provider = tls::provider();
    let issuer = Arc::new(LeafIssuer::new(ca, provider.clone())?);
    let upstream_tls = tls::upstream::client_config(&config.upstream.extra_roots, provider)?;
    let listener = TcpListener::bind(config.proxy_listen)
        .await
        .map_err(|source| AppError::Bind {
            addr: config.proxy_listen,
            source,
        })?;
    let proxy_addr = listener.local_addr().map_err(|source| AppError::Bind {
        addr: config.proxy_listen,
        source,
    })?;
    let dashboard_listener =
        TcpListener::bind(config.dashboard_listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: config.dashboard_listen,
                source,
            })?;
    let dashboard_addr = dashboard_listener
        .local_addr()
        .map_err(|source| AppError::Bind {
            addr: config.dashboard_listen,
            source,
        })?;
    let own_addrs = vec![proxy_addr, dashboard_addr];
    let dialer = Dialer::new(
        config.upstream.overrides.clone(),
        config.upstream.connect_timeout,
        own_addrs.clone(),
    );
    let state = Arc::new(ProxyState {
        intercept: config.intercept.clone(),
        catalog: Catalog::builtin(config.github_enterprise.clone())?,
        uploads: crate::proxy::resumable::Uploads::new(config.limits.max_body_bytes),
        drafts: Default::default(),
        decider,
        agents: crate::agents::Agents::load(&config.agents, &config.data_dir)?,
        vault: crate::vault::build(&config.vault)?,
        placeholders: config.placeholders.clone(),
        github_enterprise: config.github_enterprise.clone(),
        limits: config.limits.clone(),
        issuer: issuer.clone(),
        forwarder: Forwarder::new(upstream_tls, dialer),
        own_addrs,
        metrics: metrics.clone(),
        audit: audit.clone(),
        holds: holds.clone(),
    });
    let closing_audit = audit.clone();
    let dashboard_state = Arc::new(DashboardState::new(dashboard::Parts {
        reviewers: Reviewers::load(&config.reviewers, &config.data_dir)?,
        metrics,
        audit,
        holds,
        policy: active.clone(),
        policies_dir: config.policies_dir.clone(),
        addr: dashboard_addr,
    }));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let (stop_dash, dash_stopped) = oneshot::channel::<()>();
        let dash = tokio::spawn(dashboard::serve(
            dashboard_listener,
            dashboard_state,
            async {
                let _ = dash_stopped.await;
            },
        ));
        listener::serve(listener, state, async {
            let _ = stopped.await;
        })
        .await;
        let _ = stop_dash.send(());
        let _ = dash.await;
    });
    Ok(Gate {
        proxy_addr,
        dashboard_addr,
        ca_cert,
        bundle,
        created_ca,
        policy: active,
        issuer,
        watcher,
        stop: Some(stop),
        task,
        holds: closing,
        audit: closing_audit,
    })
}

/// Runs the gate until `shutdown` resolves, telling the user how to use it.
pub async fn run(
    config: &Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AppError> {
    let gate = start(config).await?;
    if gate.created_ca {
        eprintln!(
            "agentgate: created a local CA at {}",
            gate.ca_cert.display()
        );
    }
    eprintln!("{}", banner(config, &gate));
    shutdown.await;
    eprintln!("agentgate: shutting down");
    gate.shutdown().await;
    Ok(())
}

fn banner(config: &Config, gate: &Gate) -> String {
    let hosts: Vec<&str> = config.intercept.iter().map(String::as_str).collect();
    format!(
        "agentgate: proxy listening on {addr}\n\
         agentgate: intercepting {hosts}\n\
         agentgate: CA certificate {ca}\n\
         \n\
         agentgate: dashboard on {dash} (reviewer token in {data}/reviewer.token unless [[reviewers]] are configured)\n\
         \n\
         Point an agent at the gate (in the agent's shell):\n\
         \x20   eval \"$(agentgate env{cfg})\"\n",
        addr = gate.proxy_addr,
        hosts = hosts.join(", "),
        ca = gate.ca_cert.display(),
        dash = dashboard::url(gate.dashboard_addr),
        data = config.data_dir.display(),
        cfg = if config.proxy_listen.port() == gate.proxy_addr.port() {
            String::new()
        } else {
            format!(" # proxy is on port {}", gate.proxy_addr.port())
        },
    )
}

/// The shipped default policy, written to an empty or missing policy directory.
pub const DEFAULT_POLICY: &str = include_str!("../policies/default.policy");

/// Creates the policy directory with `default.policy` when it does not exist.
fn ensure_policies(dir: &std::path::Path) -> Result<(), AppError> {
    if dir.exists() {
        return Ok(());
    }
    let dir_err = |source| AppError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(dir_err)?;
    fs::write(dir.join("default.policy"), DEFAULT_POLICY).map_err(dir_err)
}

/// Drops counter series no window can reach any more, once a minute.
async fn prune_counters(counters: Arc<Counters>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        if let Err(e) = counters.prune(crate::decider::now_ms()) {
            tracing::warn!("counters: pruning failed: {e}");
        }
    }
}

/// The data directory's sled store: the counters behind `count(...)` and the audit log.
fn open_state(
    data: &std::path::Path,
    retention: crate::audit::Retention,
    window: std::time::Duration,
) -> Result<(Counters, Audit, Holds), AppError> {
    let path = crate::audit::cli::store_path(data);
    let store = |source: Box<dyn std::error::Error + Send + Sync>| AppError::Store {
        path: path.clone(),
        source,
    };
    let db = crate::store::open(&path).map_err(|e| store(Box::new(e)))?;
    let tree = db.open_tree("counters").map_err(|e| store(Box::new(e)))?;
    let counters =
        Counters::open(tree, crate::decider::now_ms()).map_err(|e| store(Box::new(e)))?;
    let audit = Audit::open(&db, &path, retention).map_err(|e| store(Box::new(e)))?;
    let holds = Holds::open(
        &db,
        &path,
        window,
        HoldLimits::default(),
        crate::decider::now_ms(),
    )
    .map_err(|e| store(Box::new(e)))?;
    Ok((counters, audit, holds))
}

/// Records the settlement of the challenges the last run left pending, which opening the
/// holds marked interrupted (every other settlement is recorded by the proxy's step-up task).
/// A crash between the two leaves them interrupted without this record.
async fn record_interrupted(audit: &Audit, holds: &Holds) {
    for c in holds.take_interrupted() {
        if let Err(e) = audit.decision(c.settlement_record()).await {
            tracing::error!(
                "audit: the interruption of challenge {} was not recorded: {e}",
                c.id
            );
        }
    }
}

/// Expires step-up challenges whose window closed (held ones also expire on their own).
async fn expire_holds(holds: Holds) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let h = holds.clone();
        let _ = tokio::task::spawn_blocking(move || h.expire_due(crate::decider::now_ms())).await;
    }
}

/// Applies the audit retention once an hour (and once at start).
async fn prune_audit(audit: Arc<Audit>) {
    loop {
        let a = audit.clone();
        let pruned = tokio::task::spawn_blocking(move || a.prune(crate::decider::now_ms())).await;
        match pruned {
            Ok(Ok(0)) | Err(_) => {}
            Ok(Ok(n)) => tracing::info!("audit: pruned {n} records past the retention"),
            Ok(Err(e)) => tracing::warn!("audit: pruning failed: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}

/// Removes decided step-up challenges past `step_up.retention` once an hour (and once at
/// start); `None` keeps them forever.
async fn prune_holds(holds: Holds, retention: Option<std::time::Duration>) {
    let Some(max_age) = retention else { return };
    loop {
        let h = holds.clone();
        let pruned =
            tokio::task::spawn_blocking(move || h.prune(crate::decider::now_ms(), max_age)).await;
        match pruned {
            Ok(Ok(0)) | Err(_) => {}
            Ok(Ok(n)) => tracing::info!("holds: removed {n} challenges past the retention"),
            Ok(Err(e)) => tracing::warn!("holds: pruning failed: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}

/// Creates `path` (and parents) with mode 0700 if missing.
fn make_private_dir(path: &std::path::Path) -> Result<(), AppError> {
    if path.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| AppError::Dir {
            path: path.to_path_buf(),
            source,
        })
}
