//! build/cuda_shim.rs, the generator of the lazy-binding trampolines that a `cuda` build links
//! in place of the CUDA libraries (build.rs, scripts/build-cuda.sh): run here on a made-up
//! library, with a small C program that calls through the trampolines. It checks that arguments
//! in registers, on the stack and in vector registers reach the real function, that a library
//! found only in the search directory is loaded, and that a missing library or symbol gives the
//! documented status (or message) and one error naming the library. Needs a C compiler (`cc`).

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

#[path = "../build/cuda_shim.rs"]
mod cuda_shim;

use std::process::Command;

use cuda_shim::{Function, Library};

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

/// Runs `cmd`, failing the test with what it printed if it does not succeed.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            panic!(
                "{cmd:?}: {e}: the CUDA shim test needs a C compiler named `cc` on PATH \
                 (apt-get install gcc, or clang)"
            )
        }
        panic!("{cmd:?}: {e}")
    });
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A library of the generator's input, from a spec and the text of its NAMES file.
fn library(spec: &str, required: bool, names: &str) -> Library {
    let spec = cuda_shim::parse_spec(spec, required).unwrap();
    let functions = cuda_shim::read_names(&spec.path, names);
    Library { spec, functions }
}

fn function(name: &str, returns_string: bool) -> Function {
    Function {
        name: name.to_string(),
        returns_string,
    }
}

#[test]
fn trampolines_reach_the_library_and_report_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
    write("fake.c", FAKE_LIB);
    write("main.c", PROGRAM);
    // The library is only in the search directory: dlopen by soname alone does not find it.
    run(Command::new("cc")
        .current_dir(d)
        .args(["-shared", "-fPIC", "-Wl,-soname,libacefake.so.1"])
        .args(["-o", "libacefake.so.1", "fake.c"]));
    let libs = [
        library("libacefake.so.1:7:mod.rs", true, FAKE_BINDINGS),
        library(
            "libace-does-not-exist.so.1:34:missing.names",
            true,
            "acemissing_call\nacemissing_name string\n",
        ),
    ];
    let (shim, count) = cuda_shim::generate(&libs, d.to_str().unwrap()).unwrap();
    assert_eq!(count, 6);
    assert_eq!(
        shim.matches("\"acefake_mix\",").count(),
        1,
        "duplicate names"
    );
    write("shim.c", &shim);

    for pie in ["-pie", "-no-pie"] {
        run(Command::new("cc")
            .current_dir(d)
            .args([
                "-Wall", "-Wextra", "-Werror", "-O2", pie, "-o", "prog", "main.c", "shim.c",
            ])
            .args(["-ldl", "-lpthread"]));
        // No LD_LIBRARY_PATH: the fake library must come from the search directory.
        let out = run(Command::new(d.join("prog")).env_remove("LD_LIBRARY_PATH"));
        let expected = "sum8 204\nsum8 120\nmix 2.5\nname real\nabsent 7\n\
             load -1 libace-does-not-exist.so.1: cannot open shared object file: \
             No such file or directory\nmissing 34\nmissing 34\n\
             missing_name libace-does-not-exist.so.1 could not be loaded (ace's CUDA shim)\n";
        assert_eq!(out, expected, "{pie}");
    }
}

#[test]
fn names_are_read_from_cudarc_bindings_and_from_name_lists() {
    let names = cuda_shim::read_names("src/fake/sys/mod.rs", FAKE_BINDINGS);
    assert_eq!(
        names,
        [
            function("acefake_sum8", false),
            function("acefake_mix", false),
            function("acefake_mix", false),
            function("acefake_name", true),
            function("acefake_absent", false),
        ]
    );
    // As cudarc 0.19 writes them (with the `dynamic-loading` variant beside), and a declaration
    // on one line, on several, returning a string, taking a pointer to one, and a static.
    let bindings = r#"
pub unsafe fn cuInit(Flags: ::core::ffi::c_uint) -> CUresult {
    extern "C" { fn cuInit(Flags: ::core::ffi::c_uint) -> CUresult; }
    cuInit(Flags)
}
pub unsafe fn cuGetErrorString(error: CUresult, pStr: *mut *const ::core::ffi::c_char) -> CUresult {
    #[cfg(feature = "dynamic-loading")]
    {
        type _F = unsafe extern "C" fn(CUresult, *mut *const ::core::ffi::c_char) -> CUresult;
        static _S: OnceLock<_F> = OnceLock::new();
        let _f = _S.get_or_init(|| unsafe { load::<_F>("cuGetErrorString") });
        _f(error, pStr)
    }
    #[cfg(not(feature = "dynamic-loading"))]
    {
        extern "C" {
            fn cuGetErrorString(error: CUresult, pStr: *mut *const ::core::ffi::c_char) -> CUresult;
        }
        cuGetErrorString(error, pStr)
    }
}
pub unsafe fn nvrtcGetErrorString(result: nvrtcResult) -> *const ::core::ffi::c_char {
    extern "C" {
        fn nvrtcGetErrorString(result: nvrtcResult) -> *const ::core::ffi::c_char;
    }
    nvrtcGetErrorString(result)
}
pub unsafe fn cublasGetCudartVersion() -> usize {
    extern "C" {
        fn cublasGetCudartVersion() -> usize;
    }
    cublasGetCudartVersion()
}
pub unsafe fn curandGetProperty(type_: libraryPropertyType, value: *mut ::core::ffi::c_int) -> curandStatus_t {
    extern "C" {
        fn curandGetProperty(
            type_: libraryPropertyType,
            value: *mut ::core::ffi::c_int,
        ) -> curandStatus_t;
    }
    curandGetProperty(type_, value)
}
extern "C" { pub static not_a_function: i32; }
"#;
    let names = cuda_shim::read_names("mod.rs", bindings);
    assert_eq!(
        names,
        [
            function("cuInit", false),
            function("cuGetErrorString", false),
            function("nvrtcGetErrorString", true),
            function("cublasGetCudartVersion", false),
            function("curandGetProperty", false),
        ]
    );
    // A name list: a name a line, ` string` for those returning one, `#` comments, blank lines.
    let list = "# libcudart.so.13\ncudaMalloc\n\n  cudaGetErrorString string\ncudaFree extra\n";
    assert_eq!(
        cuda_shim::read_names("cudart.names", list),
        [
            function("cudaMalloc", false),
            function("cudaGetErrorString", true),
            function("cudaFree", false),
        ]
    );
}

#[test]
fn library_specs_are_soname_status_and_names() {
    let spec = cuda_shim::parse_spec("libcuda.so.1:34:/a:b/driver/sys/mod.rs", true).unwrap();
    assert_eq!(
        spec,
        cuda_shim::Spec {
            soname: "libcuda.so.1".into(),
            status: 34,
            path: "/a:b/driver/sys/mod.rs".into(),
            required: true,
        }
    );
    for bad in ["libcuda.so.1:34", "libcuda.so.1:x:mod.rs", "libcuda.so.1"] {
        assert_eq!(
            cuda_shim::parse_spec(bad, false).unwrap_err(),
            format!("cuda-shim: bad library '{bad}' (expected SONAME:STATUS:NAMES)")
        );
    }
}

#[test]
fn the_generator_rejects_a_name_in_two_libraries() {
    let libs = [
        library("liba.so.1:1:a.names", true, "acefake_one\nacefake_both\n"),
        library("libb.so.1:1:b.names", false, "acefake_both\n"),
    ];
    assert_eq!(
        cuda_shim::generate(&libs, "").unwrap_err(),
        "cuda-shim: acefake_both is in both liba.so.1 and libb.so.1"
    );
}

#[test]
fn the_generator_rejects_bad_input() {
    let error = |libs: &[Library]| cuda_shim::generate(libs, "").unwrap_err();
    assert_eq!(
        error(&[library("liba.so.1:1:a.names", true, "acefake-one\n")]),
        "cuda-shim: 'acefake-one' is not a C identifier"
    );
    assert_eq!(
        error(&[library("liba.so.1:1:a.names", true, "# nothing\n")]),
        "cuda-shim: no function names in a.names"
    );
    assert_eq!(
        error(&[]),
        "cuda-shim: no libraries (ACE_CUDA_SHIM_LIBS/ACE_CUDA_SHIM_LAZY)"
    );
    let many: Vec<Library> = (0..256)
        .map(|i| library(&format!("lib{i}.so:1:{i}.names"), false, &format!("f{i}\n")))
        .collect();
    assert_eq!(error(&many), "cuda-shim: too many libraries");
    assert!(cuda_shim::generate(&many[..255], "").is_ok());
}
