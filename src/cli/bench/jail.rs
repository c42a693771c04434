//! `dust bench jail`: what the worker jail costs, measured in one run.
//!
//! - Request path: two embedded hello services, one with jailed workers, one without,
//!   driven alternately (one request each, in turn) so that drift hits both alike; reports
//!   the host-side time (Server-Timing total - guest) and the client's.
//! - Off the request path: building a shell (process start, jail, VM build) without the
//!   jail, with it, and with it forked from a zygote instead of exec'd, in turn, straight
//!   through the worker spawner.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use summoner::jail::{Jail, JailConfig};
use summoner::worker::Spawner;
use summoner::{ServiceConfig, Summoner};

use super::http::{self, Sample, Target};
use super::stats::summarize;

/// Flags of `dust bench jail`.
#[derive(Args, Debug)]
pub struct JailArgs {
    /// Measured requests per variant.
    #[arg(short = 'n', long, default_value_t = 300)]
    pub requests: usize,
    /// Shells built per variant.
    #[arg(long, default_value_t = 40)]
    pub shells: usize,
}

fn plain() -> JailConfig {
    JailConfig {
        enabled: false,
        ..JailConfig::default()
    }
}

fn service(image: &Path) -> Result<ServiceConfig, String> {
    let listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    let mut s = ServiceConfig::new("hello", listen, image);
    s.pool_size = 2;
    Ok(s)
}

fn host_ms(s: &Sample) -> Option<f64> {
    Some((s.phases.get("total")? - s.phases.get("guest")?).max(0.0))
}

/// Run the comparison and print it.
pub async fn run(args: &JailArgs) -> Result<(), String> {
    let image = super::super::serve::find_guest("http-hello")
        .ok_or("needs the http-hello guest: run scripts/build-guests")?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("dust-bench-jail-{}", std::process::id()));
    let result = measure(args, &image, &exe, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// One request-path variant: its name, summoner, target and the samples taken.
type Variant = (&'static str, Summoner, Arc<Target>, Vec<Sample>);

async fn measure(args: &JailArgs, image: &Path, exe: &Path, dir: &Path) -> Result<(), String> {
    let mut variants = start_variants(image, exe, dir).await?;
    for i in 0..args.requests {
        for k in 0..variants.len() {
            // Alternate who goes first.
            let n = variants.len();
            let v = &mut variants[(i + k) % n];
            let (mut got, _) = http::drive(v.2.clone(), 1, 1, || {}).await;
            v.3.append(&mut got);
        }
    }
    report_requests(&variants, args.requests).await;
    shells(args, image, exe, dir).await
}

/// A summoner per variant (no jail, jail without cgroups, full jail), each serving the
/// hello service and warmed up.
async fn start_variants(image: &Path, exe: &Path, dir: &Path) -> Result<Vec<Variant>, String> {
    let mut variants = Vec::new();
    let variants_cfg = [
        ("no jail", plain()),
        (
            "no cgroup",
            JailConfig {
                cgroups: false,
                ..JailConfig::default()
            },
        ),
        ("jail", JailConfig::default()),
    ];
    for (name, cfg) in variants_cfg {
        let s = Summoner::with_jail(exe.to_path_buf(), dir.join(name.replace(' ', "-")), cfg)
            .map_err(|e| e.to_string())?;
        for m in s.jail_missing() {
            eprintln!("dust bench: {name}: cannot apply {m}");
        }
        let addr = s.add(service(image)?).await.map_err(|e| e.to_string())?;
        let target = Arc::new(Target::parse(&format!("http://{addr}/"))?);
        http::drive(target.clone(), 20, 1, || {}).await;
        variants.push((name, s, target, Vec::new()));
    }
    Ok(variants)
}

/// Print each variant's host and client p50 and phase p50s, shutting its summoner down.
async fn report_requests(variants: &[Variant], requests: usize) {
    println!("request path, {requests} requests each, alternating:");
    println!(
        "{:<10} {:>10} {:>10} {:>8}",
        "", "host p50", "client p50", "errors"
    );
    let mut host_p50 = Vec::new();
    for (name, s, _, samples) in variants {
        let host: Vec<f64> = samples.iter().filter_map(host_ms).collect();
        let client: Vec<f64> = samples.iter().map(|s| s.client_ms).collect();
        let errors = samples.iter().filter(|s| s.status != 200).count();
        let (h, c) = (summarize(&host).p50, summarize(&client).p50);
        println!("{name:<10} {h:>9.3}ms {c:>9.3}ms {errors:>8}");
        let mut phases = String::new();
        for phase in ["queue", "spawn", "boot", "connect", "respond", "guest"] {
            let v: Vec<f64> = samples
                .iter()
                .filter_map(|s| s.phases.get(phase).copied())
                .collect();
            phases += &format!(" {phase} {:.3}", summarize(&v).p50);
        }
        println!("{:<10} p50 ms:{phases}", "");
        host_p50.push(h);
        s.shutdown(Duration::from_secs(5)).await;
    }
    if let [a, .., b] = host_p50[..] {
        println!("jail / no jail, host p50: {:.3}", b / a);
    }
}

async fn shells(args: &JailArgs, image: &Path, exe: &Path, dir: &Path) -> Result<(), String> {
    let svc = service(image)?;
    let mut spawners = shell_spawners(args, exe, dir)?;
    for i in 0..args.shells {
        for (name, sp, times) in spawners.iter_mut() {
            let id = format!("shell-{}-{i}", name.replace(' ', "-"));
            let config = svc.vm_config(&id, &sp.run_dir);
            let t = Instant::now();
            let w = sp.spawn(id, config).await.map_err(|e| e.to_string())?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            drop(w);
        }
    }
    println!(
        "building a shell (process start + jail + VM build), {} each:",
        args.shells
    );
    let mut p50 = Vec::new();
    for (name, _, times) in &spawners {
        let s = summarize(times);
        println!(
            "{name:<10} p50 {:>8.3}ms  p90 {:>8.3}ms  p99 {:>8.3}ms",
            s.p50, s.p90, s.p99
        );
        p50.push(s.p50);
    }
    if let [a, b, ..] = p50[..] {
        println!("added by the jail (p50): {:.3}ms", b - a);
    }
    for (_, sp, _) in &spawners {
        // Workers are reaped in the background; their jails go once they are.
        if let Some(j) = &sp.jail {
            j.released(Duration::from_secs(5)).await;
        }
        if let Some(z) = &sp.zygote {
            z.stop();
        }
        // What was made ahead, and the cgroup directory of this spawner's run dir.
        if let Some(j) = &sp.jail {
            j.finish();
        }
    }
    Ok(())
}

/// One shell variant: its name, spawner and the build times taken (ms).
type ShellVariant = (&'static str, Spawner, Vec<f64>);

/// A worker spawner per shell variant (no jail, jail, jail with a zygote).
fn shell_spawners(args: &JailArgs, exe: &Path, dir: &Path) -> Result<Vec<ShellVariant>, String> {
    let mut spawners = Vec::new();
    for (name, cfg, zygote) in [
        ("no jail", plain(), false),
        ("jail", JailConfig::default(), false),
        ("jail+zyg", JailConfig::default(), true),
    ] {
        let run_dir: PathBuf = dir.join(format!("shells-{}", name.replace(' ', "-")));
        std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
        let jail = cfg
            .enabled
            .then(|| Arc::new(Jail::new(cfg.clone(), &run_dir)));
        spawners.push((
            name,
            Spawner {
                exe: exe.to_path_buf(),
                args: vec!["worker".into()],
                run_dir,
                log_dir: summoner::default_log_dir(),
                jail,
                slots: summoner::limits::VmSlots::new(args.shells * 3 + 4),
                zygote: zygote.then(|| Arc::new(dust_jail::zygote::Zygote::new(exe.to_path_buf()))),
            },
            Vec::new(),
        ));
    }
    Ok(spawners)
}
