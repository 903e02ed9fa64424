//! scripts/cuda-shim.py, the generator of the lazy-binding trampolines that a `cuda` build links
//! in place of the CUDA libraries (scripts/build-cuda.sh): run here on a made-up library, with a
//! small C program that calls through the trampolines. It checks that arguments in registers,
//! on the stack and in vector registers reach the real function, that a library found only in
//! the search directory is loaded, and that a missing library or symbol gives the documented
//! status (or message) and one error naming the library. Needs python3 and a C compiler.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::path::Path;
use std::process::Command;

const FAKE_LIB: &str = r#"
long acefake_sum8(long a, long b, long c, long d, long e, long f, long g, long h) {
    return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + 7 * g + 8 * h;
}
double acefake_mix(int n, double x, long m, float y) { return n * x + m * y; }
const char *acefake_name(void) { return "real"; }
"#;

/// The shape of cudarc's `src/<lib>/sys/mod.rs` bindings, which the generator reads.
const FAKE_BINDINGS: &str = r#"
pub unsafe fn acefake_sum8(a: i64, b: i64, c: i64, d: i64, e: i64, f: i64, g: i64, h: i64) -> i64 {
    #[cfg(not(feature = "dynamic-loading"))]
    {
        extern "C" {
            fn acefake_sum8(a: i64, b: i64, c: i64, d: i64, e: i64, f: i64, g: i64, h: i64) -> i64;
        }
        acefake_sum8(a, b, c, d, e, f, g, h)
    }
}
#[cfg(any(feature = "v1"))]
pub unsafe fn acefake_mix(n: i32, x: f64, m: i64, y: f32) -> f64 {
    extern "C" {
        fn acefake_mix(n: ::core::ffi::c_int, x: f64, m: i64, y: f32) -> f64;
    }
    acefake_mix(n, x, m, y)
}
#[cfg(any(feature = "v2"))]
pub unsafe fn acefake_mix(n: i32, x: f64, m: i64, y: f32) -> f64 {
    extern "C" {
        fn acefake_mix(n: ::core::ffi::c_int, x: f64, m: i64, y: f32) -> f64;
    }
    acefake_mix(n, x, m, y)
}
pub unsafe fn acefake_name() -> *const ::core::ffi::c_char {
    extern "C" {
        fn acefake_name() -> *const ::core::ffi::c_char;
    }
    acefake_name()
}
pub unsafe fn acefake_absent() -> i32 {
    extern "C" {
        fn acefake_absent() -> ::core::ffi::c_int;
    }
    acefake_absent()
}
"#;

const PROGRAM: &str = r#"
#include <stdio.h>
#include <stddef.h>
long acefake_sum8(long, long, long, long, long, long, long, long);
double acefake_mix(int, double, long, float);
const char *acefake_name(void);
int acefake_absent(void);
int acemissing_call(int);
const char *acemissing_name(void);
int ace_cuda_shim_load(char *msg, size_t len);
int main(void) {
    printf("sum8 %ld\n", acefake_sum8(1, 2, 3, 4, 5, 6, 7, 8));
    printf("sum8 %ld\n", acefake_sum8(8, 7, 6, 5, 4, 3, 2, 1));
    printf("mix %g\n", acefake_mix(3, 0.5, 4, 0.25f));
    printf("name %s\n", acefake_name());
    printf("absent %d\n", acefake_absent());
    char msg[256] = "";
    int rc = ace_cuda_shim_load(msg, sizeof msg);
    printf("load %d %s\n", rc, msg);
    printf("missing %d\n", acemissing_call(5));
    printf("missing %d\n", acemissing_call(6));
    printf("missing_name %s\n", acemissing_name());
    return 0;
}
"#;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

#[test]
fn trampolines_reach_the_library_and_report_a_missing_one() {
    if !have("python3") || !have("cc") {
        eprintln!("skipped: the CUDA shim generator needs python3 and cc");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
    write("fake.c", FAKE_LIB);
    write("mod.rs", FAKE_BINDINGS);
    write("missing.names", "acemissing_call\nacemissing_name string\n");
    write("main.c", PROGRAM);
    // The library is only in the search directory: dlopen by soname alone does not find it.
    run(Command::new("cc")
        .current_dir(d)
        .args(["-shared", "-fPIC", "-Wl,-soname,libacefake.so.1"])
        .args(["-o", "libacefake.so.1", "fake.c"]));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cuda-shim.py");
    run(Command::new("python3")
        .current_dir(d)
        .arg(&script)
        .args(["-o", "shim.c", "--search-dir"])
        .arg(d)
        .args(["--lib", "libacefake.so.1:7:mod.rs"])
        .args(["--lib", "libace-does-not-exist.so.1:34:missing.names"]));
    let shim = std::fs::read_to_string(d.join("shim.c")).unwrap();
    assert_eq!(
        shim.matches("\"acefake_mix\",").count(),
        1,
        "duplicate names"
    );

    for pie in ["-pie", "-no-pie"] {
        run(Command::new("cc")
            .current_dir(d)
            .args([
                "-Wall", "-Werror", "-O2", pie, "-o", "prog", "main.c", "shim.c",
            ])
            .args(["-ldl", "-lpthread"]));
        // No LD_LIBRARY_PATH: the fake library must come from --search-dir.
        let out = run(Command::new(d.join("prog")).env_remove("LD_LIBRARY_PATH"));
        let expected = "sum8 204\nsum8 120\nmix 2.5\nname real\nabsent 7\n\
             load -1 libace-does-not-exist.so.1: cannot open shared object file: \
             No such file or directory\nmissing 34\nmissing 34\n\
             missing_name libace-does-not-exist.so.1 could not be loaded (ace's CUDA shim)\n";
        assert_eq!(out, expected, "{pie}");
    }
}

#[test]
fn the_generator_rejects_a_name_in_two_libraries() {
    if !have("python3") {
        eprintln!("skipped: the CUDA shim generator needs python3");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.names"), "acefake_one\nacefake_both\n").unwrap();
    std::fs::write(d.join("b.names"), "acefake_both\n").unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cuda-shim.py");
    let out = Command::new("python3")
        .current_dir(d)
        .arg(&script)
        .args(["-o", "shim.c", "--lib", "liba.so.1:1:a.names"])
        .args(["--lazy", "libb.so.1:1:b.names"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("acefake_both is in both liba.so.1 and libb.so.1"),
        "{err}"
    );
    assert!(!d.join("shim.c").exists());
}
