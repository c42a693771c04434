//! The wasip1 signatures of the imports dust provides. Both engines rely on them: wasmi
//! refuses a mismatched import only when instantiating, and compiled code would call the
//! AOT guest's function with the wrong arguments, so the host refuses such a module when
//! its service is created.

use wasmparser::{FuncType, ValType};

/// `(params, results)` of import `name`, with `I`/`L` for i32/i64.
fn expected(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "args_get" | "args_sizes_get" | "environ_get" | "environ_sizes_get" => ("II", "I"),
        "fd_read" | "fd_write" | "poll_oneoff" => ("IIII", "I"),
        "fd_close" => ("I", "I"),
        "fd_fdstat_get" | "fd_prestat_get" | "random_get" => ("II", "I"),
        "fd_seek" => ("ILII", "I"),
        "fd_prestat_dir_name" => ("III", "I"),
        "clock_time_get" => ("ILI", "I"),
        "proc_exit" => ("I", ""),
        "sched_yield" => ("", "I"),
        _ => return None,
    })
}

fn letters(types: &[ValType]) -> String {
    types
        .iter()
        .map(|t| match t {
            ValType::I32 => 'I',
            ValType::I64 => 'L',
            ValType::F32 => 'f',
            ValType::F64 => 'd',
            _ => '?',
        })
        .collect()
}

fn show(params: &str, results: &str) -> String {
    let words = |s: &str| {
        s.chars()
            .map(|c| match c {
                'I' => "i32",
                'L' => "i64",
                'f' => "f32",
                'd' => "f64",
                _ => "ref",
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", words(params), words(results))
}

/// `None` if import `name` of type `ty` has its wasip1 signature, else why not.
pub fn mismatch(name: &str, ty: Option<&FuncType>) -> Option<String> {
    let (params, results) = expected(name)?;
    let Some(ty) = ty else {
        return Some("an unknown type".into());
    };
    let (p, r) = (letters(ty.params()), letters(ty.results()));
    (p != params || r != results).then(|| {
        format!(
            "signature {} where wasip1 has {}",
            show(&p, &r),
            show(params, results)
        )
    })
}
