use super::*;
use crate::config::ServiceConfig;

fn svc(name: &str, image: &str) -> ServiceConfig {
    ServiceConfig::new(name, "127.0.0.1:0".parse().unwrap(), image)
}

fn no_temp_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name();
        assert!(!n.to_string_lossy().starts_with(TMP_PREFIX), "{n:?} left");
    }
}

#[test]
fn services_survive_a_reload_and_removal_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServiceState::load(dir.path()).unwrap();
    assert!(s.records().is_empty());
    s.put(Record {
        current: svc("a", "/img-2"),
        previous: Some(svc("a", "/img-1")),
    })
    .unwrap();
    s.put(Record {
        current: svc("b", "sha256:00"),
        previous: None,
    })
    .unwrap();
    let again = ServiceState::load(dir.path()).unwrap();
    assert_eq!(again.records(), s.records());
    assert_eq!(again.get("a").unwrap().previous, Some(svc("a", "/img-1")));
    assert!(again.remove("a").unwrap());
    assert!(!again.remove("a").unwrap());
    let third = ServiceState::load(dir.path()).unwrap();
    assert_eq!(third.records().len(), 1);
    no_temp_files(dir.path());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join(services::FILE))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_corrupt_state_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(services::FILE);
    for bad in [
        &b"{\"version\":1,\"serv"[..],
        b"{\"version\":9,\"services\":[]}",
        b"\xff",
    ] {
        std::fs::write(&file, bad).unwrap();
        let e = ServiceState::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(e.contains("move it away"), "{e}");
    }
}

#[test]
fn leftover_temp_files_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{TMP_PREFIX}1-1")), b"half").unwrap();
    ServiceState::load(dir.path()).unwrap();
    no_temp_files(dir.path());
}

#[test]
fn digests_parse_strictly() {
    let d = Digest::of(b"abc");
    assert_eq!(
        d.to_string(),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(Digest::parse(&d.to_string()), Some(d));
    for bad in ["sha256:", "sha256:BA78", "md5:00", "/etc/passwd"] {
        assert_eq!(Digest::parse(bad), None, "{bad}");
    }
}

#[test]
fn bad_uploads_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = Artifacts::open(dir.path()).unwrap();
    for bad in [&b"\0asm\x07\0\0\0junk"[..], b"not a kernel at all"] {
        let e = a.store(bad).unwrap_err();
        assert!(matches!(e, ArtifactError::Invalid { .. }), "{e}");
        assert!(
            !e.to_string().contains(&dir.path().display().to_string()),
            "{e}"
        );
    }
    assert!(a.list().unwrap().is_empty());
    no_temp_files(&dir.path().join("artifacts"));
}

#[test]
fn references_resolve_to_verified_files_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = Artifacts::open(dir.path()).unwrap();
    let d = Digest::of(b"bytes");
    std::fs::create_dir_all(dir.path().join("artifacts")).unwrap();
    std::fs::write(a.path(&d), b"bytes").unwrap();
    let mut c = ServiceConfig::wasm("a", "127.0.0.1:0".parse().unwrap(), d.to_string());
    let r = a.resolve(&c).unwrap();
    assert_eq!(artifacts::file(&r.workload), a.path(&d).as_path());
    assert_eq!(a.unresolve(&r), c);
    assert_eq!(Artifacts::references(&c), vec![d.to_string()]);
    std::fs::write(a.path(&d), b"bytez").unwrap();
    assert!(matches!(a.resolve(&c), Err(ArtifactError::Corrupt(_))));
    assert!(a.remove(&d).unwrap());
    assert!(matches!(a.resolve(&c), Err(ArtifactError::NotFound(_))));
    c = svc("a", "sha256:zz");
    assert!(matches!(a.resolve(&c), Err(ArtifactError::BadDigest(_))));
    let plain = svc("b", "/some/image");
    assert_eq!(a.resolve(&plain).unwrap(), plain);
}
