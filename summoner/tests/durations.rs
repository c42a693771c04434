//! Every duration a service may hold (`config::DURATIONS`, what validation admits) is
//! written back in the service grammar, so that a config read from the daemon can be sent
//! back unchanged. Found by the `api_body` fuzz target with a duration of 70 hours, which
//! humantime writes as "2days 22h 25m 30s": validation refuses that config, so no running
//! service holds one, but the writer must stay inside the range it is used for.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::time::Duration;

use summoner::config::{service_duration, DURATIONS};
use summoner::ServiceConfig;

#[test]
fn admitted_durations_are_written_in_the_service_grammar() {
    let hour = *DURATIONS.end();
    let ns = Duration::from_nanos(1);
    let samples = [
        *DURATIONS.start(),
        Duration::from_millis(250),
        Duration::from_secs(90),
        Duration::from_secs(59 * 60 + 59) + Duration::from_nanos(999_999_999),
        hour - ns,
        hour,
    ];
    for d in samples {
        let mut cfg = ServiceConfig::new("svc", "127.0.0.1:0".parse().unwrap(), "/img");
        cfg.queue_deadline = d;
        cfg.request_deadline = d;
        cfg.header_timeout = d;
        cfg.idle_timeout = d;
        let json = serde_json::to_value(&cfg).unwrap();
        for field in [
            "queue_deadline",
            "request_deadline",
            "header_timeout",
            "idle_timeout",
        ] {
            let text = json[field].as_str().expect("a duration string");
            assert_eq!(
                service_duration::parse(text),
                Ok(d),
                "{field} {d:?} as {text:?}"
            );
        }
        let back: ServiceConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, cfg);
    }
}

#[test]
fn long_durations_are_written_in_hours_never_days() {
    let d = Duration::from_secs(70 * 3600 + 25 * 60 + 30) + Duration::from_micros(7);
    let text = service_duration::format(d);
    assert_eq!(text, "70h 25m 30s 7us");
    assert_eq!(service_duration::parse(&text), Ok(d));
    assert_eq!(service_duration::format(Duration::ZERO), "0s");
}
