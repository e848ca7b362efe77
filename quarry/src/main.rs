//! The `quarry` binary: the only crate with tokio, sockets and clocks.

mod blocks;
mod cli;
mod config;
mod miner;
mod node;
mod server;
mod wallet;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use quarry_work::job::JobFactory;
use tokio::net::TcpListener;
use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, ServeArgs};
use crate::node::Nodes;
use crate::server::{Limits, Server, SharedPool};

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Mine(args) => runtime.block_on(miner::run(args)),
        Command::Payout(args) => runtime.block_on(payout(*args)),
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let config = args.config()?;
    let resolved = config.resolve()?;
    let nodes = Nodes::new(
        &config.nodes,
        config.data_dir.join("blocks"),
        Duration::from_secs(config.mining.template_refresh_secs.max(1)),
        Duration::from_secs(config.mining.poll_interval_secs.max(1)),
        config.mining.longpoll,
    )?;
    let pool = Arc::new(SharedPool::new(JobFactory::new(resolved.layout.clone())));
    let limits = Limits {
        max_connections: config.stratum.max_connections,
        max_per_ip: config.stratum.max_connections_per_ip,
        write_timeout: Duration::from_secs(config.stratum.write_timeout_secs.max(1)),
    };
    let ledger_url = config.ledger_url();
    if ledger_url.starts_with("sqlite:") {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    }
    let store = quarry_ledger::Store::open(&ledger_url)
        .await
        .with_context(|| format!("opening ledger.url {}", redact(&ledger_url)))?;
    info!(ledger = %redact(&ledger_url), backend = ?store.backend(), "share log open");
    let share_log = quarry_ledger::ShareLog::spawn(store.clone(), config.data_dir.join("spool"));
    let instance = config
        .ledger
        .instance
        .clone()
        .unwrap_or_else(|| format!("quarry-{}", config.stratum.listen.port()));
    let blocks = blocks::BlockKeeper {
        nodes: Arc::clone(&nodes),
        store,
        rewards: resolved.rewards.clone(),
        maturity: config.payout.maturity,
        instance: instance.clone(),
    }
    .spawn();
    let server = Server::new(
        resolved.session,
        Arc::clone(&pool),
        Arc::clone(&nodes),
        share_log,
        instance,
        blocks,
        limits,
    );
    let listener = TcpListener::bind(config.stratum.listen)
        .await
        .with_context(|| format!("binding stratum.listen {}", config.stratum.listen))?;
    info!(listen = %listener.local_addr()?, network = %config.network, mode = %config.mining.mode, "quarry stratum listening");

    // New tip → new duplicate generation.
    let mut templates = nodes.subscribe();
    let duplicate_pool = Arc::clone(&pool);
    tokio::spawn(async move {
        while templates.changed().await.is_ok() {
            let template = templates.borrow_and_update().clone();
            if let Some(template) = template {
                duplicate_pool.on_template(&template);
            }
        }
    });
    tokio::spawn(Arc::clone(&nodes).run());
    tokio::spawn(server::report(
        Arc::clone(&server.stats),
        Duration::from_secs(10),
    ));

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let accept = tokio::spawn(Arc::clone(&server).run(listener, shutdown_rx));
    shutdown_signal().await;
    info!("shutting down");
    let _ = shutdown_tx.send(true);
    // Let connection tasks flush their client.reconnect.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), accept).await;
    Ok(())
}

async fn payout(args: ServeArgs) -> Result<()> {
    let config = args.config()?;
    config.resolve()?;
    let nodes = Nodes::new(
        &config.nodes,
        config.data_dir.join("blocks"),
        Duration::from_secs(30),
        Duration::from_secs(2),
        false,
    )?;
    let url = config.ledger_url();
    let store = quarry_ledger::Store::open(&url)
        .await
        .with_context(|| format!("opening ledger.url {}", redact(&url)))?;
    wallet::payout_once(&store, nodes, config.threshold_sat()).await
}

/// A database URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
