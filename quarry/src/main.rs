//! The `quarry` binary: the only crate with tokio, sockets and clocks.

mod api;
mod aux;
mod blocks;
mod cli;
mod coinbase_payouts;
mod config;
mod dashboard;
mod driver;
mod events;
mod iroh_endpoint;
mod kaspa;
mod lightning;
mod loadgen;
mod miner;
mod node;
mod payout_destination;
mod proxy;
mod quic;
mod server;
mod tls;
mod tp;
mod verify;
mod wallet;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use quarry_work::job::JobFactory;
use tokio::net::TcpListener;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, ServeArgs};
use crate::node::Nodes;
use crate::server::{Limits, Server};
use quarry_stratum::SharedPool;

/// `--status-secs`, read by `serve`.
static STATUS_SECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(10);

fn main() -> Result<()> {
    let cli = Cli::parse();
    // --quiet keeps the status line (its own target) unless RUST_LOG says otherwise.
    let default_filter = match cli.quiet {
        true => "warn,quarry::status=info",
        false => "info",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format.as_str() {
        "json" => logs.json().flatten_event(true).init(),
        _ => logs.init(),
    }
    STATUS_SECS.store(cli.status_secs, Ordering::Relaxed);
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Mine(args) => match args.coin.as_str() {
            "bitcoin" => runtime.block_on(miner::run(*args)),
            "kaspa" => runtime.block_on(kaspa::miner::run(*args)),
            other => Err(anyhow::anyhow!(
                "--coin must be bitcoin or kaspa, not {other}"
            )),
        },
        Command::Payout(args) => runtime.block_on(payout(*args)),
        Command::Tp(args) => runtime.block_on(tp::run(*args)),
        Command::Proxy(args) => runtime.block_on(proxy::run(*args)),
        Command::Loadgen(args) => runtime.block_on(loadgen::run(*args)),
        Command::Verify(args) => runtime.block_on(verify::run(*args)),
        Command::Keygen => {
            let pair = quarry_stratum::v2::AuthorityKeypair::generate();
            println!("authority_secret_key = \"{}\"", pair.secret_text());
            println!("authority_public_key = \"{}\"", pair.public_text());
            Ok(())
        }
    }
}

/// Each miner holds a descriptor, and the usual soft limit (1024) would cap a pool at about a
/// thousand miners: raise it to the hard limit, and say so when even that is short.
fn raise_open_file_limit(max_connections: usize) {
    let wanted = max_connections as u64 + 256;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) if limit < wanted => warn!(
            limit,
            max_connections,
            "open-file limit is below stratum.max_connections; raise the hard limit (LimitNOFILE= in systemd, ulimit -Hn)"
        ),
        Ok(limit) => info!(limit, "open-file limit"),
        Err(e) => warn!(error = %e, "could not raise the open-file limit"),
    }
}

/// The ledger, its share log and this instance's name.
async fn open_ledger(
    config: &config::Config,
) -> Result<(quarry_ledger::Store, quarry_ledger::ShareLog, String)> {
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
    Ok((store, share_log, instance))
}

/// The hashrate history book, and its writer.
fn start_history(
    store: &quarry_ledger::Store,
    config: &config::Config,
) -> Arc<std::sync::Mutex<quarry_ledger::HistoryBook>> {
    let book = Arc::new(std::sync::Mutex::new(quarry_ledger::HistoryBook::new()));
    tokio::spawn(server::write_history(
        store.clone(),
        Arc::clone(&book),
        config.ledger.history_retention(),
        // A write of 10,000 workers takes about 0.7 s on SQLite (BENCHMARKS.md).
        Duration::from_secs(10),
    ));
    book
}

/// `[kaspa]` with `stratum.enabled = false`: the Kaspa port alone, with the API.
async fn serve_kaspa_alone(config: config::Config, kaspa: config::KaspaResolved) -> Result<()> {
    let (store, share_log, instance) = open_ledger(&config).await?;
    let share_log_stats = Arc::clone(share_log.stats());
    let history = start_history(&store, &config);
    let events = Arc::new(events::EventBus::default());
    let bans = Arc::new(server::Bans::new(
        config.bans.policy()?,
        config.bans.enabled,
    ));
    raise_open_file_limit(config.kaspa.max_connections);
    let scheme = kaspa.rewards.scheme.name().to_string();
    tokio::spawn(ledger_upkeep(
        store.clone(),
        kaspa.rewards.clone(),
        config.ledger.retention_days.unwrap_or(90.0),
    ));
    let metrics = Arc::new(events::Metrics::default());
    let (server, listener) = kaspa::start(
        &config.kaspa,
        kaspa,
        Arc::clone(&metrics),
        kaspa::Shared {
            store: store.clone(),
            share_log,
            instance,
            data_dir: config.data_dir.clone(),
            events: Arc::clone(&events),
            bans: Arc::clone(&bans),
            history: Arc::clone(&history),
        },
    )
    .await?;
    if let Some(listen) = config.api.listen {
        let state = Arc::new(api::ApiState {
            store: store.clone(),
            metrics: Arc::new(events::Metrics::default()),
            events,
            admin_token: config.api.admin_token.clone(),
            scheme,
            fee_percent: config.kaspa.fee_percent,
            threshold_sat: config.threshold_sat(),
            wallets: Vec::new(),
            bans,
            kaspa: Some(metrics),
            share_log: Arc::clone(&share_log_stats),
            coinbase: None,
            lightning: None,
            destinations: None,
            connect: dashboard::Connect {
                kaspa: Some(config.kaspa.listen),
                network: config.kaspa.network.clone(),
                mode: config.kaspa.mode.clone(),
                ..dashboard::Connect::default()
            },
        });
        spawn_api(listen, state).await?;
    }
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let accept = tokio::spawn(server.run(listener, None, shutdown_rx));
    shutdown_signal().await;
    info!("shutting down");
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), accept).await;
    server::flush_history(&store, &history).await;
    Ok(())
}

async fn spawn_api(listen: std::net::SocketAddr, state: Arc<api::ApiState>) -> Result<()> {
    let http = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding api.listen {listen}"))?;
    let local = http.local_addr()?;
    // On the status target: --quiet keeps it, so the URL is always printed.
    info!(target: "quarry::status", listen = %local, dashboard = %dashboard::url(local), "HTTP API and dashboard listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(http, api::router(state)).await {
            tracing::error!(error = %e, "HTTP API stopped");
        }
    });
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    let config = args.config()?;
    let kaspa = match config.kaspa.enabled {
        true => Some(config.kaspa.resolve(&config.payout)?),
        false => None,
    };
    let kaspa = match (config.stratum.enabled, kaspa) {
        (false, Some(kaspa)) => return serve_kaspa_alone(config, kaspa).await,
        (false, None) => {
            anyhow::bail!("stratum.enabled = false and [kaspa] is off: nothing to serve")
        }
        (true, kaspa) => kaspa,
    };
    let resolved = config.resolve()?;
    let kaspa_metrics = kaspa.as_ref().map(|_| Arc::new(events::Metrics::default()));
    let nodes = Nodes::new(
        &config.nodes,
        config.data_dir.join("blocks"),
        Duration::from_secs(config.mining.template_refresh_secs.max(1)),
        Duration::from_secs(config.mining.poll_interval_secs.max(1)),
        config.mining.longpoll,
    )?;
    let mut pool = SharedPool::new(
        JobFactory::new(resolved.layout.clone()),
        resolved.extranonce1_prefix.clone(),
    );
    if config.sv2.enabled && config.sv2.job_declaration {
        info!("Job Declaration on: miners may declare their own jobs");
        pool = pool.with_declarations(quarry_stratum::v2::declaration::JdConfig {
            max_transactions: config.sv2.jd_max_transactions.clamp(1, 65_535),
            coinbase_only: config.sv2.jd_coinbase_only,
            ..Default::default()
        });
    }
    let pool = Arc::new(pool);
    if let Some(path) = std::env::var_os("QUARRY_CLOCK_OFFSET_FILE") {
        driver::follow_clock_file(path.into());
    }
    raise_open_file_limit(config.stratum.max_connections);
    let limits = Limits {
        max_connections: config.stratum.max_connections,
        max_per_ip: config.stratum.max_connections_per_ip,
        write_timeout: Duration::from_secs(config.stratum.write_timeout_secs.max(1)),
        trusted_proxies: quarry_stratum::proxy_header::TrustedProxies::parse(
            &config.stratum.proxy_protocol_from,
        )
        .map_err(|e| anyhow::anyhow!("stratum.proxy_protocol_from: {e}"))?,
    };
    let (store, share_log, instance) = open_ledger(&config).await?;
    let history = start_history(&store, &config);
    let events = Arc::new(events::EventBus::default());
    let metrics = Arc::clone(&nodes.metrics);
    let coinbase = resolved.coinbase.clone().map(|settings| {
        info!(
            max_outputs = settings.max_outputs,
            min_output_sat = settings.min_output_sat,
            reserved_weight = settings.reserved_weight,
            "payouts in the coinbase (coinbase-pplns)"
        );
        coinbase_payouts::CoinbasePayouts::new(store.clone(), settings)
    });
    let blocks = blocks::BlockKeeper {
        nodes: Arc::clone(&nodes),
        store: store.clone(),
        rewards: resolved.rewards.clone(),
        maturity: config.payout.maturity,
        instance: instance.clone(),
        events: Arc::clone(&events),
        coinbase_epochs: coinbase.as_ref().map(|(c, _)| Arc::clone(&c.epochs)),
    }
    .spawn();
    let aux = match resolved.aux.is_empty() {
        true => None,
        false => Some(aux::AuxChains::new(&resolved.aux)?),
    };
    let wallets = wallet::chain_wallets(&config, &nodes, aux.as_ref());
    let lightning = start_lightning(&config, &events, resolved.coinbase.is_some()).await?;
    let network = config.network()?;
    let destinations = lightning.as_ref().map(|ln| {
        Arc::new(payout_destination::Registrar {
            store: store.clone(),
            lightning: Some(Arc::clone(ln)),
            network,
            events: Arc::clone(&events),
        })
    });
    let bans = Arc::new(server::Bans::new(
        config.bans.policy()?,
        config.bans.enabled,
    ));
    let sv2 = config.sv2()?;
    if let Some(sv2) = &sv2 {
        info!(authority_public_key = %sv2.authority.public_text(), "Stratum V2 enabled on the stratum port (miners pin this key)");
    }
    if let Some(listen) = config.api.listen {
        let state = Arc::new(api::ApiState {
            store: store.clone(),
            metrics: Arc::clone(&metrics),
            events: Arc::clone(&events),
            admin_token: config.api.admin_token.clone(),
            scheme: resolved.rewards.scheme.name().to_string(),
            fee_percent: config.payout.fee_percent,
            threshold_sat: config.threshold_sat(),
            wallets: wallets.clone(),
            bans: Arc::clone(&bans),
            kaspa: kaspa_metrics.clone(),
            share_log: Arc::clone(share_log.stats()),
            lightning: lightning.clone(),
            destinations: destinations.clone(),
            coinbase: coinbase.as_ref().map(|(c, view)| api::CoinbaseApi {
                view: view.clone(),
                pool_address: c.settings().pool_address.clone(),
                network: config.network.clone(),
            }),
            connect: dashboard::Connect {
                stratum: Some(config.stratum.listen),
                tls: config.stratum.tls_listen,
                sv2_key: sv2.as_ref().map(|s| s.authority.public_text()),
                kaspa: config.kaspa.enabled.then_some(config.kaspa.listen),
                network: config.network.clone(),
                mode: config.mining.mode.clone(),
            },
        });
        spawn_api(listen, state).await?;
    }
    tokio::spawn(ledger_upkeep(
        store.clone(),
        resolved.rewards.clone(),
        config.ledger.retention_days.unwrap_or(90.0),
    ));
    // Solo Bitcoin blocks pay their finder in the coinbase; merge-mined blocks are credited in
    // both modes, so aux chains with payouts need the loop too.
    let pays = config.mining.mode == "pool"
        || wallets
            .iter()
            .any(|w| w.chain != quarry_ledger::Chain::BITCOIN);
    if pays && config.payout.interval_secs > 0 {
        tokio::spawn(payout_loop(
            store.clone(),
            wallets,
            lightning.clone(),
            Duration::from_secs(config.payout.interval_secs),
            Arc::clone(&events),
        ));
    }
    let mut work = aux::work_stream(&nodes, aux.as_ref(), &metrics);
    if let Some((coinbase, _)) = &coinbase {
        work = coinbase.run(work);
    }
    let aux_blocks = aux.as_ref().map(|aux| {
        info!(chains = ?resolved.aux.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), "merge mining");
        aux.spawn_submitter(aux::AuxKeeper {
            store: store.clone(),
            rewards: resolved.rewards.clone(),
            maturity: config.payout.maturity,
            dir: config.data_dir.join("aux"),
            instance: instance.clone(),
            events: Arc::clone(&events),
            metrics: Arc::clone(&metrics),
        })
    });
    let server = Server::new(
        server::Protocol::bitcoin(resolved.session, sv2, Arc::clone(&pool), work.clone()),
        server::Outputs {
            ledger: share_log.clone(),
            instance: instance.clone(),
            blocks,
            aux_blocks,
            metrics: Arc::clone(&metrics),
            events: Arc::clone(&events),
            history: Arc::clone(&history),
            destinations,
            nodes: Some(Arc::clone(&nodes)),
        },
        limits,
        Arc::clone(&bans),
    );
    let listener = listen(config.stratum.listen, config.stratum.reuse_port)
        .with_context(|| format!("binding stratum.listen {}", config.stratum.listen))?;
    info!(listen = %listener.local_addr()?, network = %config.network, mode = %config.mining.mode, "quarry stratum listening");
    let quic_endpoint = match (&config.sv2.quic_listen, config.sv2.enabled) {
        (Some(listen), true) => {
            let endpoint = quic::server(*listen)?;
            info!(listen = %endpoint.local_addr()?, "Stratum V2 over QUIC listening (stratum2+quic://)");
            Some(endpoint)
        }
        (Some(_), false) => anyhow::bail!("sv2.quic_listen needs sv2.enabled = true"),
        (None, _) => None,
    };
    let iroh_endpoint = match (&config.sv2.iroh_listen, config.sv2.enabled) {
        (Some(listen), true) => {
            let endpoint =
                iroh_endpoint::server(&config.data_dir, *listen, config.sv2.iroh_relays).await?;
            let direct: Vec<String> = endpoint
                .bound_sockets()
                .iter()
                .map(ToString::to_string)
                .collect();
            info!(target: "quarry::status", node_id = %endpoint.node_id(), bound = ?direct,
                  relays = config.sv2.iroh_relays, "Stratum V2 over Iroh listening (iroh://<node id>)");
            Some(endpoint)
        }
        (Some(_), false) => anyhow::bail!("sv2.iroh_listen needs sv2.enabled = true"),
        (None, _) => None,
    };
    let tls_listener = match &config.stratum.tls_listen {
        None => None,
        Some(listen) => {
            let (Some(cert), Some(key)) = (&config.stratum.tls_cert, &config.stratum.tls_key)
            else {
                anyhow::bail!("stratum.tls_listen needs stratum.tls_cert and stratum.tls_key");
            };
            let acceptor = Arc::new(tls::Acceptor::load(cert, key)?);
            acceptor.reload_on_sighup()?;
            let listener = self::listen(*listen, config.stratum.reuse_port)
                .with_context(|| format!("binding stratum.tls_listen {listen}"))?;
            info!(listen = %listener.local_addr()?, cert = %cert.display(), "stratum+ssl (TLS) listening; SIGHUP reloads the certificate");
            Some((listener, acceptor))
        }
    };

    // Each template: a new duplicate generation on a new tip, metrics, MiningJobCreated.
    let mut templates = work.clone();
    let duplicate_pool = Arc::clone(&pool);
    let (template_metrics, template_events) = (Arc::clone(&metrics), Arc::clone(&events));
    tokio::spawn(async move {
        let mut tip = None;
        while templates.changed().await.is_ok() {
            let template = templates.borrow_and_update().clone();
            if let Some(template) = template {
                duplicate_pool.on_template(&template);
                template_metrics
                    .template_ms
                    .store(driver::unix_ms(), Ordering::Relaxed);
                template_metrics
                    .height
                    .store(template.height, Ordering::Relaxed);
                template_metrics.network_difficulty_bits.store(
                    template.network_target.difficulty().to_bits(),
                    Ordering::Relaxed,
                );
                let new_tip = tip != Some(template.prev_hash);
                tip = Some(template.prev_hash);
                template_events.publish(
                    "MiningJobCreated",
                    serde_json::json!({
                        "template_id": template.id,
                        "height": template.height,
                        "prev_hash": quarry_work::hash::to_display_hex(&template.prev_hash),
                        "transactions": template.tx_count,
                        "coinbase_value": template.coinbase_value,
                        "clean_jobs": new_tip,
                    }),
                );
            }
        }
    });
    tokio::spawn(Arc::clone(&nodes).run());
    let status_secs = STATUS_SECS.load(Ordering::Relaxed);
    if status_secs > 0 {
        tokio::spawn(server::report(
            Arc::clone(&metrics),
            Duration::from_secs(status_secs),
        ));
    }

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    if let (Some(kaspa), Some(metrics)) = (kaspa, kaspa_metrics) {
        let (server, listener) = kaspa::start(
            &config.kaspa,
            kaspa,
            metrics,
            kaspa::Shared {
                store: store.clone(),
                share_log: share_log.clone(),
                instance: instance.clone(),
                data_dir: config.data_dir.clone(),
                events: Arc::clone(&events),
                bans: Arc::clone(&bans),
                history: Arc::clone(&history),
            },
        )
        .await?;
        tokio::spawn(server.run(listener, None, shutdown_rx.clone()));
    }
    if let Some(quic) = quic_endpoint {
        tokio::spawn(Arc::clone(&server).run_quic(quic, shutdown_rx.clone()));
    }
    if let Some(iroh) = iroh_endpoint {
        tokio::spawn(Arc::clone(&server).run_iroh(iroh, shutdown_rx.clone()));
    }
    let accept = tokio::spawn(Arc::clone(&server).run(listener, None, shutdown_rx.clone()));
    if let Some((listener, acceptor)) = tls_listener {
        tokio::spawn(Arc::clone(&server).run(listener, Some(acceptor), shutdown_rx));
    }
    shutdown_signal().await;
    info!("shutting down");
    let _ = shutdown_tx.send(true);
    // Let connection tasks flush their client.reconnect.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), accept).await;
    server::flush_history(&store, &history).await;
    if let Some(lightning) = &lightning {
        lightning.shutdown().await;
    }
    Ok(())
}

/// The embedded Lightning node with `[lightning]` on, its channel policy running.
async fn start_lightning(
    config: &config::Config,
    events: &Arc<events::EventBus>,
    coinbase_payouts: bool,
) -> Result<Option<Arc<lightning::Lightning>>> {
    if !config.lightning.enabled {
        return Ok(None);
    }
    if coinbase_payouts {
        anyhow::bail!("[lightning] and payout.scheme = \"coinbase-pplns\" both pay Bitcoin balances: choose one");
    }
    let lightning = lightning::Lightning::start(config, Arc::clone(events)).await?;
    tokio::spawn(Arc::clone(&lightning).run_policy());
    Ok(Some(lightning))
}

async fn payout(args: ServeArgs) -> Result<()> {
    let config = args.config()?;
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
    let resolved = config.resolve()?;
    let aux = match resolved.aux.is_empty() {
        true => None,
        false => Some(aux::AuxChains::new(&resolved.aux)?),
    };
    let wallets = wallet::chain_wallets(&config, &nodes, aux.as_ref());
    let events = Arc::new(events::EventBus::default());
    let lightning = start_lightning(&config, &events, resolved.coinbase.is_some()).await?;
    let paid = wallet::payout_once(&store, &wallets, lightning.as_deref(), &events).await;
    if let Some(lightning) = &lightning {
        lightning.shutdown().await;
    }
    paid
}

/// PPS accrual every few seconds (PPS only) and share retention every hour. Both are safe with
/// several frontends: PPS claims share ranges, and pruning only deletes.
async fn ledger_upkeep(
    store: quarry_ledger::Store,
    rewards: quarry_ledger::Rewards,
    retention_days: f64,
) {
    let retention_ms = (retention_days * 86_400_000.0) as i64;
    let mut last_prune = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = i64::try_from(driver::unix_ms()).unwrap_or(i64::MAX);
        if rewards.scheme == quarry_ledger::Scheme::Pps {
            // Shares settle for 10 s so that commits in flight are not skipped.
            match store
                .accrue_pps(rewards.policy.fee_ppm, 10_000, now - 10_000, now)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::debug!(shares = n, "PPS credited"),
                Err(e) => tracing::warn!(error = %e, "PPS accrual failed; will retry"),
            }
        }
        if last_prune.elapsed() >= Duration::from_secs(3600) {
            last_prune = std::time::Instant::now();
            let pruned = async {
                let cutoff = rewards.retention_cutoff(&store, now, retention_ms).await?;
                let max_id = if rewards.scheme == quarry_ledger::Scheme::Pps {
                    store.pps_progress().await?
                } else {
                    i64::MAX
                };
                store.prune_shares(cutoff, max_id).await
            };
            match pruned.await {
                Ok(0) => {}
                Ok(n) => info!(shares = n, "pruned shares past retention"),
                Err(e) => tracing::warn!(error = %e, "share retention failed; will retry"),
            }
        }
    }
}

/// Payouts on an interval. With several frontends on one PostgreSQL, only the one holding the
/// advisory lock pays; the others keep trying for it in case that one stops.
async fn payout_loop(
    store: quarry_ledger::Store,
    wallets: Vec<wallet::ChainWallet>,
    lightning: Option<Arc<lightning::Lightning>>,
    every: Duration,
    events: Arc<events::EventBus>,
) {
    let _lock = loop {
        match store.try_payout_lock().await {
            Ok(Some(lock)) => break lock,
            Ok(None) => tracing::debug!("another instance runs payouts"),
            Err(e) => tracing::warn!(error = %e, "payout lock"),
        }
        tokio::time::sleep(every.min(Duration::from_secs(30))).await;
    };
    info!("this instance runs payouts");
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = wallet::payout_once(&store, &wallets, lightning.as_deref(), &events).await {
            tracing::warn!(error = %format!("{e:#}"), "payout run failed; the intent stays pending");
        }
    }
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

/// A listening socket on `address`; with `reuse_port`, one that other processes may bind too
/// (SO_REUSEPORT: the kernel spreads new connections across them).
fn listen(address: std::net::SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = match address {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std's bind does on Unix: a restarted pool need not wait out TIME_WAIT.
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(address)?;
    socket.listen(4096)
}

#[cfg(test)]
mod tests {
    use super::listen;

    #[tokio::test]
    async fn frontends_share_a_port_only_with_reuse_port() {
        let first = listen("127.0.0.1:0".parse().expect("address"), true).expect("bind");
        let address = first.local_addr().expect("address");
        let second = listen(address, true).expect("a second frontend binds the same port");
        assert!(
            listen(address, false).is_err(),
            "without reuse_port the port is taken"
        );
        // Both accept: connections go to one or the other.
        let client = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let accepted = tokio::select! {
            a = first.accept() => a,
            b = second.accept() => b,
        };
        assert_eq!(
            accepted.expect("accepted").1,
            client.local_addr().expect("address")
        );
    }
}
