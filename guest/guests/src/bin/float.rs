//! f64 arithmetic at run time: the guests build for a soft-float target, so this becomes
//! calls into compiler-builtins (`__adddf3`, `__divdf3`, ...) and never touches x87 or SSE,
//! which the emulating KVM cannot run. Prints sqrt(2) (Newton), pi (Nilakantha series) and
//! e (sum of 1/n!), and the square of every argument parsed as f64; exits 0 if the three
//! constants match `core::f64::consts` to 1e-9, else 1 naming the one that did not.
#![no_std]
#![no_main]

use core::f64::consts::{E, PI, SQRT_2};
use core::hint::black_box;

dust_guest::entry!(main);

fn sqrt(x: f64) -> f64 {
    let mut r = x;
    for _ in 0..8 {
        r = 0.5 * (r + x / r);
    }
    r
}

fn pi(terms: u32) -> f64 {
    let (mut sum, mut sign) = (3.0, 1.0);
    for k in 0..terms {
        let n = f64::from(2 * k + 2);
        sum += sign * 4.0 / (n * (n + 1.0) * (n + 2.0));
        sign = -sign;
    }
    sum
}

fn e(terms: u32) -> f64 {
    let (mut sum, mut term) = (1.0, 1.0);
    for n in 1..terms {
        term /= f64::from(n);
        sum += term;
    }
    sum
}

fn main() -> u32 {
    let results = [
        ("sqrt2", sqrt(black_box(2.0)), SQRT_2),
        ("pi", pi(black_box(1200)), PI),
        ("e", e(black_box(20)), E),
    ];
    let mut status = 0;
    for (name, got, want) in results {
        dust_guest::println!("float: {name} = {got:.10}");
        if (got - want).abs() > 1e-9 {
            dust_guest::println!("float: {name} is off by {:e}", got - want);
            status = 1;
        }
    }
    for arg in dust_guest::args() {
        match arg.parse::<f64>() {
            Ok(x) => dust_guest::println!("float: {x}^2 = {}", x * x),
            Err(_) => dust_guest::println!("float: {arg} is not a number"),
        }
    }
    status
}
