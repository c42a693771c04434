use super::host;
use super::*;

#[test]
fn parses_a_file_with_defaults() {
    let c: FileConfig = toml::from_str(
        r#"
[[service]]
name = "hello"
listen = "127.0.0.1:8080"
image = "/x/http-hello"
queue_deadline = "250ms"

[[service]]
name = "echo"
listen = "127.0.0.1:9000"
mode = "tcp"
image = "/x/echo"
guest_port = 5000
"#,
    )
    .unwrap();
    assert_eq!(c.services.len(), 2);
    assert_eq!(c.services[0].queue_deadline, Duration::from_millis(250));
    assert_eq!(c.services[0].max_concurrent, 4);
    assert_eq!(c.services[1].mode, Mode::Tcp);
    assert_eq!((c.services[0].vcpus, c.services[0].irqchip), (1, false));
    assert_eq!((c.daemon.health_listen, c.daemon.drain_delay), (None, None));
    let c =
        FileConfig::parse("health_listen = \"127.0.0.1:9090\"\ndrain_delay = \"3s\"\n").unwrap();
    assert_eq!(c.daemon.health_listen, "127.0.0.1:9090".parse().ok());
    assert_eq!(c.daemon.drain_delay, Some(Duration::from_secs(3)));
    let e = FileConfig::parse("run_dri = \"/x\"\n").unwrap_err();
    assert!(
        e.contains("unknown key `run_dri`") && e.contains("run_dir"),
        "{e}"
    );
    let e = FileConfig::parse("drain_delay = \"1.5s\"\n").unwrap_err();
    assert!(e.contains("1.5s"), "{e}");
    let e = toml::from_str::<FileConfig>(
        "[[service]]\nname='a'\nlisten='1.2.3.4:1'\nimage='x'\nport=3",
    )
    .unwrap_err();
    assert!(e.to_string().contains("port"), "{e}");
}

#[test]
fn validation_names_the_problem() {
    let mut s = ServiceConfig::new("Bad Name", "127.0.0.1:1".parse().unwrap(), "/nonexistent");
    assert!(matches!(s.validate(), Err(ServiceConfigError::Name(_))));
    s.name = "ok".into();
    let e = s.validate().unwrap_err().to_string();
    assert!(e.contains("/nonexistent"), "{e}");
    s.workload = Workload::Image(host::tiny_elf());
    s.max_concurrent = 0;
    assert!(matches!(s.validate(), Err(ServiceConfigError::Zero { .. })));
    s.max_concurrent = 1;
    assert!(matches!(
        s.validate(),
        Err(ServiceConfigError::PoolTooBig {
            pool: 2,
            max: 1,
            ..
        })
    ));
    s.pool_size = 1;
    s.memory_mib = 0;
    assert!(matches!(s.validate(), Err(ServiceConfigError::Vm { .. })));
    s.memory_mib = 32;
    s.vcpus = 2;
    assert!(matches!(s.validate(), Err(ServiceConfigError::Vm { .. })));
    s.irqchip = true;
    assert_eq!(s.validate(), Ok(()));
    for (field, bad) in [
        ("cmdline", &|s: &mut ServiceConfig| {
            s.cmdline = String::from("a\nb")
        }),
        ("guest_port", &|s: &mut ServiceConfig| {
            s.guest_port = u32::MAX
        }),
        ("request_deadline", &|s: &mut ServiceConfig| {
            s.request_deadline = Duration::from_nanos(1)
        }),
        ("idle_timeout", &|s: &mut ServiceConfig| {
            s.idle_timeout = Duration::from_secs(7200)
        }),
    ] as [(&str, &dyn Fn(&mut ServiceConfig)); 4]
    {
        let mut c = s.clone();
        bad(&mut c);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(field), "{e}");
    }
    let mut passwd = s.clone();
    passwd.workload = Workload::Image("/etc/passwd".into());
    let e = passwd.validate().unwrap_err().to_string();
    assert!(e.contains("not an x86_64 ELF or a bzImage"), "{e}");
    let vm = s.vm_config("hello-1", Path::new("/run/d"));
    assert_eq!(vm.cmdline, "vm=hello-1");
    assert_eq!((vm.vcpus, vm.irqchip), (2, true));
    assert_eq!(vm.vsock.unwrap().uds, PathBuf::from("/run/d/hello-1.vsock"));
}

#[test]
fn modes_parse_as_in_config_files() {
    assert_eq!("http".parse(), Ok(Mode::Http));
    assert_eq!("tcp".parse(), Ok(Mode::Tcp));
    assert_eq!(Mode::Tcp.to_string().parse(), Ok(Mode::Tcp));
    let e = "udp".parse::<Mode>().unwrap_err().to_string();
    assert!(e.contains("use http or tcp"), "{e}");
}

#[test]
fn serial_files_stay_in_the_log_dir() {
    let logs = Path::new("/var/log/dust");
    let mut s = ServiceConfig::new("svc", "127.0.0.1:1".parse().unwrap(), "/x");
    assert_eq!(s.serial_path(logs), Ok(None));
    for (bad, problem) in [
        ("/etc/x", "outside the log directory"),
        ("../x", "\"..\""),
        ("/var/log/dust/../x", "\"..\""),
        ("", "empty"),
        ("a\0b", "NUL"),
        ("sub/x.log", "no subdirectories"),
        ("/var/log/dust", "the log directory itself"),
        ("/var/log/dustx/a", "outside the log directory"),
    ] {
        s.serial = SerialConfig::File(bad.into());
        let e = s.serial_path(logs).unwrap_err().to_string();
        assert!(
            e.contains(problem) && e.contains("/var/log/dust") && e.contains("service svc"),
            "{bad:?}: {e}"
        );
    }
    for good in [
        "name.log",
        "/var/log/dust/name.log",
        "/var/log/dust/./name.log",
    ] {
        s.serial = SerialConfig::File(good.into());
        assert_eq!(
            s.serial_path(logs),
            Ok(Some(PathBuf::from("/var/log/dust/name.log"))),
            "{good:?}"
        );
    }
    // validate() alone (no log dir known) refuses what no log dir could hold.
    s.workload = Workload::Image(host::tiny_elf());
    for bad in ["", "../x", "a/b"] {
        s.serial = SerialConfig::File(bad.into());
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("serial file"), "{bad:?}: {e}");
    }
}

#[test]
fn service_durations_take_only_the_documented_grammar() {
    use service_duration::parse;
    for (text, want) in [
        ("250ms", Duration::from_millis(250)),
        ("5s", Duration::from_secs(5)),
        ("1m 30s", Duration::from_secs(90)),
        ("1m30s", Duration::from_secs(90)),
        ("1h", Duration::from_secs(3600)),
        ("1s 2ms 3us 4ns", Duration::new(1, 2_003_004)),
        ("9999999999h", Duration::from_secs(9_999_999_999 * 3600)),
    ] {
        assert_eq!(parse(text), Ok(want), "{text}");
    }
    // Outside the grammar (and the API spec's pattern), though humantime takes some.
    for text in [
        "",
        "5",
        "s",
        "5 s",
        "1.5s",
        "2min",
        "1d",
        "5S",
        " 5s",
        "5s ",
        "1s  2s",
        "1m,30s",
        "12345678901s",
        "1s 1s 1s 1s 1s 1s 1s",
        "-1s",
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.contains("invalid duration"), "{text}: {e}");
    }
    // What the daemon writes back is taken again.
    for d in [Duration::from_millis(10), Duration::new(3599, 999_999_999)] {
        let text = humantime::format_duration(d).to_string();
        assert_eq!(parse(&text), Ok(d), "{text}");
    }
    let e = serde_json::from_str::<ServiceConfig>(
        r#"{"name":"a","listen":"127.0.0.1:1","image":"/x","idle_timeout":"2 minutes"}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("ns, us, ms, s, m or h"), "{e}");
}

#[test]
fn listen_addresses_are_written_plainly() {
    use listen_addr::parse;
    for ok in [
        "127.0.0.1:8080",
        "0.0.0.0:0",
        "[::1]:80",
        "[FE80::1]:65535",
        "[1:2:3:4:5:6:7::]:1",
    ] {
        assert!(parse(ok).is_ok(), "{ok}");
    }
    for bad in [
        "127.0.0.1:080",
        "127.0.0.1:00",
        "[fe80::1%2]:80",
        "[::ffff:1.2.3.4]:80",
        "127.0.0.1",
        "localhost:80",
        "127.0.0.1:65536",
        "01.2.3.4:1",
    ] {
        let e = parse(bad).unwrap_err();
        assert!(e.contains("invalid listen address"), "{bad}: {e}");
    }
}

#[test]
fn serial_files_are_private_and_never_followed_through_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = host::TempDir::new("serial");
    let dir = tmp.path();
    let log = dir.join("svc.log");
    std::fs::write(&log, "earlier\n").unwrap();
    // Appended to, not truncated: every VM of a service shares the file.
    std::io::Write::write_all(&mut open_serial_file(&log).unwrap(), b"later\n").unwrap();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "earlier\nlater\n");
    let new = dir.join("new.log");
    open_serial_file(&new).unwrap();
    let mode = std::fs::metadata(&new).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let target = dir.join("target");
    std::fs::write(&target, "keep").unwrap();
    let link = dir.join("link.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = open_serial_file(&link).unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    let e = open_serial_file(dir).unwrap_err().to_string();
    assert!(
        e.contains("not a regular file") || e.contains("directory"),
        "{e}"
    );
}

#[test]
fn counts_past_max_count_and_zero_fuel_are_refused() {
    let ok = ServiceConfig::new("a", "127.0.0.1:0".parse().unwrap(), host::tiny_elf());
    assert_eq!(ok.validate(), Ok(()));
    let mut c = ok.clone();
    c.queue_depth = MAX_COUNT + 1;
    assert!(
        matches!(
            c.validate(),
            Err(ServiceConfigError::TooLarge {
                field: "queue_depth",
                ..
            })
        ),
        "{:?}",
        c.validate()
    );
    // Past the semaphore's capacity, which used to panic when the service started.
    let mut c = ok.clone();
    c.max_concurrent = usize::MAX;
    assert!(matches!(
        c.validate(),
        Err(ServiceConfigError::TooLarge {
            field: "max_concurrent",
            ..
        })
    ));
    let mut c = ok.clone();
    c.max_connections = MAX_COUNT;
    assert_eq!(c.validate(), Ok(()));
    let mut c = ok;
    c.workload = Workload::Wasm(WasmWorkload {
        module: "/nonexistent.wasm".into(),
        engine: Engine::Interpreter,
        fuel: Some(0),
        compiled: None,
        interpreter: None,
    });
    assert!(matches!(
        c.validate(),
        Err(ServiceConfigError::Zero { field: "fuel", .. })
    ));
}

#[test]
fn a_service_runs_an_image_or_a_module_never_both() {
    let parse = |extra: &str| {
        toml::from_str::<ServiceConfig>(&format!("name = 'a'\nlisten = '1.2.3.4:1'\n{extra}"))
    };
    let c = parse("image = '/x'").unwrap();
    assert_eq!(
        (c.workload.clone(), c.snapshot),
        (Workload::Image("/x".into()), false)
    );
    let c = parse("wasm = '/h.wasm'\nfuel = 5\nengine = 'interpreter'").unwrap();
    let want = WasmWorkload {
        module: "/h.wasm".into(),
        engine: Engine::Interpreter,
        fuel: Some(5),
        compiled: None,
        interpreter: None,
    };
    assert_eq!(
        (c.workload.clone(), c.snapshot),
        (Workload::Wasm(want), true)
    );
    let c = parse("wasm = '/h.wasm'\nsnapshot = false").unwrap();
    assert!(
        matches!(&c.workload, Workload::Wasm(w) if w.engine == Engine::Aot),
        "aot is the default"
    );
    assert!(!c.snapshot);
    for (extra, says) in [
        ("image = '/x'\nwasm = '/h.wasm'", "not both"),
        (
            "image = '/x'\nfuel = 5",
            "`fuel` applies to WebAssembly services only",
        ),
        ("image = '/x'\nengine = 'aot'", "`engine` applies"),
        ("wasm = '/h.wasm'\nengine = 'jit'", "jit"),
        ("cmdline = ''", "give `image`"),
    ] {
        let e = parse(extra).unwrap_err().to_string();
        assert!(e.contains(says), "{extra}: {e}");
    }
}

#[test]
fn the_wire_form_round_trips() {
    let mut c = ServiceConfig::wasm("w", "127.0.0.1:9".parse().unwrap(), "/h.wasm");
    c.request_deadline = Duration::from_millis(1500);
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["wasm"], "/h.wasm");
    assert_eq!(json["engine"], "aot");
    assert_eq!(json["snapshot"], true);
    assert!(json.get("image").is_none(), "{json}");
    assert_eq!(json["request_deadline"], "1s 500ms");
    let back: ServiceConfig = serde_json::from_value(json).unwrap();
    assert_eq!(back, c);
    let img = ServiceConfig::new("i", "127.0.0.1:9".parse().unwrap(), "/img");
    let json = serde_json::to_value(&img).unwrap();
    assert!(
        json.get("wasm").is_none() && json.get("fuel").is_none(),
        "{json}"
    );
    assert_eq!(serde_json::from_value::<ServiceConfig>(json).unwrap(), img);
}

#[test]
fn the_engine_that_runs_and_the_image_are_the_resolved_ones() {
    let tmp = host::TempDir::new("engine");
    let core = tmp.path().join("core.wasm");
    let component = tmp.path().join("component.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(&component, b"\0asm\x0d\0\x01\0").unwrap();
    let w = |module: &std::path::Path, engine| WasmWorkload {
        module: module.into(),
        engine,
        fuel: None,
        compiled: None,
        interpreter: None,
    };
    // Before the summoner resolves them: from the module's header.
    assert_eq!(w(&core, Engine::Aot).running_engine(), Engine::Aot);
    assert_eq!(
        w(&component, Engine::Aot).running_engine(),
        Engine::Interpreter,
        "a component runs on the interpreter whatever engine says"
    );
    assert_eq!(
        w(&core, Engine::Interpreter).running_engine(),
        Engine::Interpreter
    );
    // Resolved: the module is not read again (it may be gone), and its VMs boot the
    // image found at creation.
    let gone = tmp.path().join("gone.wasm");
    let mut c = ServiceConfig::wasm("w", "127.0.0.1:0".parse().unwrap(), &gone);
    c.workload = Workload::Wasm(WasmWorkload {
        interpreter: Some("/guests/dust-component".into()),
        ..w(&gone, Engine::Aot)
    });
    assert_eq!(c.image_path(), PathBuf::from("/guests/dust-component"));
    assert_eq!(
        c.wasm_workload().unwrap().running_engine(),
        Engine::Interpreter
    );
    c.workload = Workload::Wasm(WasmWorkload {
        compiled: Some("/cache/aot/x.img".into()),
        ..w(&gone, Engine::Aot)
    });
    assert_eq!(c.image_path(), PathBuf::from("/cache/aot/x.img"));
    assert_eq!(c.wasm_workload().unwrap().running_engine(), Engine::Aot);
}
