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
    assert_eq!((c.health_listen, c.drain_delay), (None, Duration::ZERO));
    let c: FileConfig =
        toml::from_str("health_listen = \"127.0.0.1:9090\"\ndrain_delay = \"3s\"\n").unwrap();
    assert_eq!(c.health_listen, "127.0.0.1:9090".parse().ok());
    assert_eq!(c.drain_delay, Duration::from_secs(3));
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
    s.image = host::tiny_elf();
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
    passwd.image = "/etc/passwd".into();
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
    c.fuel = Some(0);
    assert!(matches!(
        c.validate(),
        Err(ServiceConfigError::Zero { field: "fuel", .. })
    ));
}
