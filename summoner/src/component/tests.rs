use super::*;

/// A component in the text format, with the handler export around `body`.
fn component(body: &str) -> Vec<u8> {
    wat::parse_str(format!("(component {body})")).unwrap()
}

/// A wasi:http/proxy component: imports `wasi:http/types`, lowers one function and one
/// resource drop into a core module's imports, and exports its `handle` lifted.
const PROXY: &str = r#"
  (import "wasi:http/types@0.2.4" (instance $types
    (export "fields" (type (sub resource)))
    (export "[constructor]fields" (func (result (own 0))))))
  (alias export $types "fields" (type $fields))
  (alias export $types "[constructor]fields" (func $new-fields))
  (core module $m
    (import "types" "[constructor]fields" (func (result i32)))
    (import "types" "[resource-drop]fields" (func (param i32)))
    (memory (export "memory") 1)
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 0)
    (func (export "handle")))
  (core func $memory-less (canon lower (func $new-fields)))
  (core func $drop (canon resource.drop $fields))
  (core instance $imports
    (export "[constructor]fields" (func $memory-less))
    (export "[resource-drop]fields" (func $drop)))
  (core instance $main (instantiate $m (with "types" (instance $imports))))
  (alias core export $main "memory" (core memory $mem))
  (alias core export $main "cabi_realloc" (core func $realloc))
  (func $handle (canon lift (core func $main "handle") (memory $mem) (realloc $realloc)))
  (component $shim
    (import "import-func-handle" (func $f))
    (export "handle" (func $f)))
  (instance $handler (instantiate $shim (with "import-func-handle" (func $handle))))
  (export "wasi:http/incoming-handler@0.2.4" (instance $handler))
"#;

#[test]
fn a_proxy_component_becomes_a_plan() {
    let bytes = component(PROXY);
    let plan = check(&bytes).unwrap();
    assert_eq!(plan.modules.len(), 1);
    assert_eq!(
        &bytes[plan.modules[0].start..plan.modules[0].start + 4],
        b"\0asm"
    );
    assert_eq!(plan.imports, vec!["wasi:http/types@0.2.4".to_string()]);
    assert_eq!(plan.handler_interface, "wasi:http/incoming-handler@0.2.4");
    let main = |name: &str| CoreRef {
        instance: 1,
        name: name.into(),
    };
    assert_eq!(plan.handler.0, main("handle"));
    assert_eq!(plan.handler.1.memory, Some(main("memory")));
    assert_eq!(plan.handler.1.realloc, Some(main("cabi_realloc")));
    let CoreInstance::Items(items) = &plan.instances[0] else {
        panic!("{:?}", plan.instances[0]);
    };
    let host = |name: &str, kind| {
        Item::Host(HostFunc {
            interface: "wasi:http/types@0.2.4".into(),
            name: name.into(),
            kind,
            options: Options::default(),
        })
    };
    assert_eq!(
        items,
        &vec![
            (
                "[constructor]fields".to_string(),
                host("[constructor]fields", HostKind::Lower)
            ),
            (
                "[resource-drop]fields".to_string(),
                host("fields", HostKind::ResourceDrop)
            ),
        ]
    );
    assert_eq!(
        plan.instances[1],
        CoreInstance::Module {
            module: 0,
            args: vec![("types".into(), 0)]
        }
    );
}

#[test]
fn a_component_for_another_world_is_refused_with_what_it_exports() {
    let bytes = component(
        r#"
  (core module $m (func (export "run") (result i32) i32.const 0))
  (core instance $main (instantiate $m))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli))"#,
    );
    let e = check(&bytes).unwrap_err();
    assert_eq!(
        e,
        ComponentError::WrongWorld {
            exports: vec!["wasi:cli/run@0.2.0".into()]
        }
    );
    let text = e.to_string();
    assert!(
        text.contains("wasi:cli/run@0.2.0") && text.contains(HANDLER),
        "{text}"
    );
    let e = check(&component("")).unwrap_err();
    assert!(e.to_string().contains("exports nothing"), "{e}");
}

#[test]
fn every_missing_import_is_named() {
    let extra = r#"
  (import "wasi:sockets/tcp@0.2.0" (instance))
  (import "wasi:filesystem/types@0.2.0" (instance))
  (import "wasi:http/outgoing-handler@0.2.4" (instance))
  (import "wasi:io/streams@0.3.0" (instance))
  (import "wasi:http/types@0.2.0" (instance $t
    (export "frobnicate" (func (result u64)))))
  (alias export $t "frobnicate" (func $f))
  (core func $low (canon lower (func $f)))
"#;
    let e = check(&component(&format!("{extra}{PROXY}"))).unwrap_err();
    let ComponentError::Unsupported(names) = &e else {
        panic!("{e}");
    };
    assert_eq!(
        names,
        &vec![
            "wasi:sockets/tcp@0.2.0".to_string(),
            "wasi:filesystem/types@0.2.0".into(),
            "wasi:http/outgoing-handler@0.2.4".into(),
            "wasi:io/streams@0.3.0".into(),
        ],
        "a lowered function no instance imports is not needed"
    );
    let used = r#"(core instance (export "f" (func $low)))"#;
    let e = check(&component(&format!("{extra}{used}{PROXY}"))).unwrap_err();
    let text = e.to_string();
    for name in [
        "wasi:sockets/tcp@0.2.0",
        "wasi:filesystem/types@0.2.0",
        "wasi:http/outgoing-handler@0.2.4",
        "wasi:io/streams@0.3.0",
        "wasi:http/types@0.2.0#frobnicate",
    ] {
        assert!(text.contains(name), "{name} missing from: {text}");
    }
}

#[test]
fn invalid_and_nested_components_are_refused() {
    let mut bytes = component(PROXY);
    bytes.truncate(bytes.len() - 5);
    assert!(matches!(check(&bytes), Err(ComponentError::Invalid(_))));
    let nested = PROXY.replace(
        "(export \"handle\" (func $f))",
        "(core module) (export \"handle\" (func $f))",
    );
    let nested = component(&nested);
    assert_eq!(check(&nested), Err(ComponentError::Nested));
}

/// The examples, when `scripts/build-examples` has built them, plan with nothing missing.
#[test]
fn the_example_components_plan() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/wasm/target");
    for name in ["hello-component.wasm", "hello-wstd.wasm"] {
        let Ok(bytes) = std::fs::read(dir.join(name)) else {
            eprintln!("SKIP {name}: run scripts/build-examples");
            continue;
        };
        let plan = check(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(plan.modules.len() >= 2, "{name}: {plan:?}");
    }
}

#[test]
fn the_wasm_check_sends_components_here_and_modules_the_old_way() {
    use crate::wasm::{check as check_wasm, WasmError};
    let info = check_wasm(&component(PROXY), 32).unwrap();
    assert_eq!(info.imports, vec!["wasi:http/types@0.2.4"]);
    let e = check_wasm(&component(""), 32).unwrap_err();
    assert!(matches!(e, WasmError::Component(_)), "{e}");
    assert!(e.to_string().contains("another world"), "{e}");
    let module = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "fd_write"
              (func (param i32 i32 i32 i32) (result i32)))
            (memory 1) (func (export "_start")))"#,
    )
    .unwrap();
    let info = check_wasm(&module, 32).unwrap();
    assert_eq!(info.imports, vec!["wasi_snapshot_preview1::fd_write"]);
}
