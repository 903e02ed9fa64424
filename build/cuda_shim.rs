//! Writes the C source of ace's CUDA shim: lazy-binding trampolines that stand in for the CUDA
//! libraries at link time, so that a `cuda` build of ace has no DT_NEEDED on libcuda.so.1,
//! libcublas.so.13, ... and starts (and runs on the CPU) where they are missing. build.rs
//! compiles and links it when `ACE_CUDA_SHIM_LIBS` is set (scripts/build-cuda.sh sets it);
//! tests/cuda_shim.rs runs it on a made-up library.
//!
//! A library is given as SONAME:STATUS:NAMES ([`parse_spec`]). NAMES lists the library's
//! functions: either one of cudarc's `src/<lib>/sys/mod.rs` bindings (the names of its
//! `extern "C"` functions) or a text file with one name a line ([`read_names`]). STATUS is the
//! value every function returns while its library or symbol cannot be loaded; it must be one of
//! the library's documented error codes (cudarc's bindings read it as that library's status
//! enum). Functions that return a string (cudarc binds them as `-> *const c_char`; in a text
//! file, a name followed by ` string`) return a message instead.
//!
//! For every name the shim defines a hidden global function `NAME: jmp *slot(%rip)`: a jump
//! keeps every argument register and the stack as the caller left them, so no signature is
//! needed. Each slot first points just behind its jump, at a stub that saves the argument
//! registers, asks `ace_cuda_shim_resolve` for the real address (dlopen of the library by
//! soname, then in the search directory, then dlsym), stores it in the slot and jumps there;
//! later calls take one indirect jump. Nothing is loaded before the first call, so a CPU run
//! never maps the GPU libraries. Required libraries are also loaded up front by
//! `ace_cuda_shim_load` (ace calls it before opening a GPU, to report a missing library in one
//! line); lazy ones only when used.
//!
//! x86-64 System V (Linux) only.

/// A library as given to the generator: `SONAME:STATUS:NAMES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub soname: String,
    /// What its functions return while it (or the symbol) is missing.
    pub status: i64,
    /// The file that lists its functions (cudarc bindings if it ends in `.rs`, else a name list).
    pub path: String,
    /// Loaded up front by `ace_cuda_shim_load`, rather than only when one of its functions is
    /// called.
    pub required: bool,
}

/// A function of a library: its name, and whether it returns a string (`const char *`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    pub returns_string: bool,
}

/// A library with the functions read from its `path`.
#[derive(Debug, Clone)]
pub struct Library {
    pub spec: Spec,
    pub functions: Vec<Function>,
}

/// Parses `SONAME:STATUS:NAMES` (NAMES may itself contain `:`).
pub fn parse_spec(spec: &str, required: bool) -> Result<Spec, String> {
    let bad = || format!("cuda-shim: bad library '{spec}' (expected SONAME:STATUS:NAMES)");
    let mut parts = spec.splitn(3, ':');
    let (Some(soname), Some(status), Some(path)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let status = status.trim().parse().map_err(|_| bad())?;
    Ok(Spec {
        soname: soname.to_string(),
        status,
        path: path.to_string(),
        required,
    })
}

/// The functions of a cudarc sys module (`path` ends in `.rs`) or of a name list, in file order.
pub fn read_names(path: &str, text: &str) -> Vec<Function> {
    if path.ends_with(".rs") {
        read_bindings(text)
    } else {
        read_name_list(text)
    }
}

/// A name list: one name a line, optionally followed by `string`; `#` starts a comment line.
fn read_name_list(text: &str) -> Vec<Function> {
    let mut names = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some((first, rest)) = words.split_first() {
            if !first.starts_with('#') {
                names.push(Function {
                    name: first.to_string(),
                    returns_string: rest == ["string"],
                });
            }
        }
    }
    names
}

/// cudarc declares each function, under `cfg(not(feature = "dynamic-loading"))`, as
///     extern "C" { fn cuInit(Flags: ::core::ffi::c_uint) -> CUresult; }
/// (over several lines): the name follows `fn`, and the declaration ends at the first `;` that
/// is followed by the block's `}`.
fn read_bindings(text: &str) -> Vec<Function> {
    const OPEN: &str = "extern \"C\" {";
    let mut names = Vec::new();
    let mut at = 0;
    while let Some(found) = text[at..].find(OPEN) {
        let start = at + found;
        match read_declaration(&text[start + OPEN.len()..]) {
            Some((function, len)) => {
                names.push(function);
                at = start + OPEN.len() + len;
            }
            None => at = start + 1,
        }
    }
    names
}

/// The function declared at the start of `rest` (just after `extern "C" {`), and the length of
/// its declaration up to the block's `}` included.
fn read_declaration(rest: &str) -> Option<(Function, usize)> {
    let body = rest.trim_start();
    let skipped = rest.len() - body.len();
    let after_fn = body.strip_prefix("fn ")?;
    let name_len = after_fn
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(after_fn.len());
    let (name, after_name) = after_fn.split_at(name_len);
    if name.is_empty() {
        return None;
    }
    let args = after_name.strip_prefix('(')?;
    // The first `;` followed by optional whitespace and `}`.
    let (end, close) = args.match_indices(';').find_map(|(i, _)| {
        let tail = &args[i + 1..];
        let trimmed = tail.trim_start();
        trimmed
            .starts_with('}')
            .then(|| (i, i + 1 + (tail.len() - trimmed.len()) + 1))
    })?;
    let signature = args[..end].trim();
    let returns_string = signature
        .strip_suffix("*const ::core::ffi::c_char")
        .is_some_and(|s| s.trim_end().ends_with("->"));
    let len = skipped + "fn ".len() + name_len + 1 + close;
    let function = Function {
        name: name.to_string(),
        returns_string,
    };
    Some((function, len))
}

fn is_c_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn c_string(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

/// The C source of the shim for `libs` (required ones first, in the order that
/// `ace_cuda_shim_load` loads them), and the number of functions it defines. `search_dir` (may
/// be empty) is tried after the soname: `search_dir/SONAME`.
pub fn generate(libs: &[Library], search_dir: &str) -> Result<(String, usize), String> {
    if libs.is_empty() {
        return Err("cuda-shim: no libraries (ACE_CUDA_SHIM_LIBS/ACE_CUDA_SHIM_LAZY)".into());
    }
    if libs.len() > 255 {
        return Err("cuda-shim: too many libraries".into());
    }
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut funcs: Vec<(&str, usize, bool)> = Vec::new(); // (name, library index, returns_string)
    for (li, lib) in libs.iter().enumerate() {
        if lib.functions.is_empty() {
            return Err(format!("cuda-shim: no function names in {}", lib.spec.path));
        }
        for f in &lib.functions {
            if let Some(&other) = seen.get(f.name.as_str()) {
                if other != li {
                    return Err(format!(
                        "cuda-shim: {} is in both {} and {}",
                        f.name, libs[other].spec.soname, lib.spec.soname
                    ));
                }
                continue; // cudarc declares a few functions twice, under different cfgs
            }
            if !is_c_identifier(&f.name) {
                return Err(format!("cuda-shim: '{}' is not a C identifier", f.name));
            }
            seen.insert(f.name.as_str(), li);
            funcs.push((&f.name, li, f.returns_string));
        }
    }

    let mut out: Vec<String> = Vec::new();
    let mut w = |line: &str| out.push(line.to_string());
    w("/* Generated by build/cuda_shim.rs: ace's lazy-binding CUDA shim. Do not edit. */");
    w(C_HEADER);
    w(&format!(
        "static const char search_dir[] = {};",
        c_string(search_dir)
    ));
    w("static struct lib libs[] = {");
    for lib in libs {
        w(&format!(
            "    {{{}, {}, 0, NULL, {{0}}}},",
            c_string(&lib.spec.soname),
            u8::from(lib.spec.required)
        ));
    }
    w("};");
    w(&format!("#define NLIBS {}", libs.len()));
    w("");
    w("/* What a function returns while its library or symbol is missing. */");
    for (li, lib) in libs.iter().enumerate() {
        w(&format!(
            "static __attribute__((unused)) long fail_{li}(void) {{ return {}; }}",
            lib.spec.status
        ));
        let msg = format!("{} could not be loaded (ace's CUDA shim)", lib.spec.soname);
        w(&format!(
            "static __attribute__((unused)) const char *fail_string_{li}(void) {{ return {}; }}",
            c_string(&msg)
        ));
    }
    w("");
    w(&format!(
        "static const char *const names[{}] = {{",
        funcs.len()
    ));
    for (name, _, _) in &funcs {
        w(&format!("    {},", c_string(name)));
    }
    w("};");
    w(&format!(
        "static const unsigned char lib_of[{}] = {{",
        funcs.len()
    ));
    for chunk in funcs.chunks(32) {
        let indices: Vec<String> = chunk.iter().map(|(_, li, _)| li.to_string()).collect();
        w(&format!("    {},", indices.join(", ")));
    }
    w("};");
    w(&format!(
        "static void *const fallback[{}] = {{",
        funcs.len()
    ));
    for (_, li, string) in &funcs {
        let kind = if *string { "string_" } else { "" };
        w(&format!("    (void *)fail_{kind}{li},"));
    }
    w("};");
    w("");
    w("/* One pointer a function, read by its trampoline (written by the assembly below). */");
    w("extern HIDDEN void *ace_cuda_shim_slots[];");
    w("");
    w(C_FUNCTIONS);

    // The trampolines. Each is `jmp *slot(%rip)` (6 bytes) followed by its lazy stub, which the
    // slot points at until resolved: the stub passes the function's index in %r11 (a scratch
    // register that carries no argument) to the common resolver.
    let mut a: Vec<String> = vec!["    .pushsection .text".into()];
    for (i, (name, _, _)) in funcs.iter().enumerate() {
        a.push("    .p2align 4".into());
        a.push(format!("    .globl {name}"));
        a.push(format!("    .hidden {name}"));
        a.push(format!("    .type {name}, @function"));
        a.push(format!("{name}:"));
        a.push(format!("    jmp *ace_cuda_shim_slots+{}(%rip)", 8 * i));
        a.push(format!(".Lace_lazy_{i}:"));
        a.push(format!("    movl ${i}, %r11d"));
        a.push("    jmp .Lace_lazy_common".into());
        a.push(format!("    .size {name}, .-{name}"));
    }
    a.push(ASM_LAZY_COMMON.into());
    a.push("    .pushsection .data".into());
    a.push("    .p2align 3".into());
    a.push("    .globl ace_cuda_shim_slots".into());
    a.push("    .hidden ace_cuda_shim_slots".into());
    a.push("ace_cuda_shim_slots:".into());
    for i in 0..funcs.len() {
        a.push(format!("    .quad .Lace_lazy_{i}"));
    }
    a.push("    .popsection".into());
    w("__asm__(");
    for line in a.join("\n").lines() {
        w(&format!("    {}", c_string(&format!("{line}\n"))));
    }
    w(");");
    let count = funcs.len();
    Ok((out.join("\n") + "\n", count))
}

/// From the includes to the declaration of `search_dir`.
const C_HEADER: &str = r#"#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#if !defined(__x86_64__) || !defined(__linux__)
#error the CUDA shim is written for x86-64 Linux
#endif

#define HIDDEN __attribute__((visibility("hidden")))

struct lib {
    const char *soname;
    int required;
    int tried;             /* under `lock`: dlopen was attempted */
    void *handle;          /* under `lock`, NULL when it failed */
    char error[512];       /* under `lock`: why it failed */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;"#;

/// The loader, which the lazy stubs and ace call.
const C_FUNCTIONS: &str = r#"/* Opens library `li` once; the caller holds `lock`. */
static void *open_locked(int li) {
    struct lib *l = &libs[li];
    if (!l->tried) {
        l->tried = 1;
        l->handle = dlopen(l->soname, RTLD_NOW | RTLD_LOCAL);
        if (!l->handle) {
            const char *e = dlerror();
            snprintf(l->error, sizeof l->error, "%s", e ? e : "dlopen failed");
            if (search_dir[0]) {
                char path[4096];
                snprintf(path, sizeof path, "%s/%s", search_dir, l->soname);
                l->handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
                if (!l->handle) {
                    /* Keep the soname's error unless the file is there but did not load. */
                    e = dlerror();
                    if (e && !strstr(e, "No such file"))
                        snprintf(l->error, sizeof l->error, "%s", e);
                }
            }
        }
    }
    return l->handle;
}

/* Called by the lazy stubs: the address that function `i` is to jump to from now on. */
HIDDEN void *ace_cuda_shim_resolve(unsigned i) {
    pthread_mutex_lock(&lock);
    void *handle = open_locked(lib_of[i]);
    void *f = handle ? dlsym(handle, names[i]) : NULL;
    if (!f)
        f = fallback[i];
    __atomic_store_n(&ace_cuda_shim_slots[i], f, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&lock);
    return f;
}

/* Loads every required library now, in order. Returns 0, or -1 with "SONAME: why" in `msg`
   for the first that does not load. */
HIDDEN int ace_cuda_shim_load(char *msg, size_t len) {
    int rc = 0;
    pthread_mutex_lock(&lock);
    for (int li = 0; li < NLIBS && rc == 0; li++) {
        if (libs[li].required && !open_locked(li)) {
            /* dlerror's text usually starts with the soname already. */
            const char *e = libs[li].error;
            if (strncmp(e, libs[li].soname, strlen(libs[li].soname)) == 0)
                snprintf(msg, len, "%s", e);
            else
                snprintf(msg, len, "%s: %s", libs[li].soname, e);
            rc = -1;
        }
    }
    pthread_mutex_unlock(&lock);
    return rc;
}
"#;

/// Entered with the caller's arguments in place and its return address at (%rsp). Saves the
/// integer argument registers, %rax (the vector count of variadic calls) and %xmm0-7, calls the
/// resolver on an aligned stack, restores them all and jumps to the result, so the real
/// function sees exactly the call that was made (stack arguments included).
const ASM_LAZY_COMMON: &str = "    .p2align 4
.Lace_lazy_common:
    pushq %rbp
    movq %rsp, %rbp
    pushq %rdi
    pushq %rsi
    pushq %rdx
    pushq %rcx
    pushq %r8
    pushq %r9
    pushq %rax
    pushq %r10
    subq $128, %rsp
    movdqa %xmm0, 0(%rsp)
    movdqa %xmm1, 16(%rsp)
    movdqa %xmm2, 32(%rsp)
    movdqa %xmm3, 48(%rsp)
    movdqa %xmm4, 64(%rsp)
    movdqa %xmm5, 80(%rsp)
    movdqa %xmm6, 96(%rsp)
    movdqa %xmm7, 112(%rsp)
    movl %r11d, %edi
    call ace_cuda_shim_resolve
    movq %rax, %r11
    movdqa 0(%rsp), %xmm0
    movdqa 16(%rsp), %xmm1
    movdqa 32(%rsp), %xmm2
    movdqa 48(%rsp), %xmm3
    movdqa 64(%rsp), %xmm4
    movdqa 80(%rsp), %xmm5
    movdqa 96(%rsp), %xmm6
    movdqa 112(%rsp), %xmm7
    addq $128, %rsp
    popq %r10
    popq %rax
    popq %r9
    popq %r8
    popq %rcx
    popq %rdx
    popq %rsi
    popq %rdi
    popq %rbp
    jmp *%r11
    .popsection";
