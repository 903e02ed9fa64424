//! Files damaged or lost: an output that is an input (items 1), file modes (2), formats by
//! extension (11), special files and blocked paths (12).

use crate::common::*;
use serde_json::json;

/// Item 1: `-o X` with `--image X`, through the same path or a hard link, alone and as a batch
/// job, is refused and X is untouched; two jobs writing one file stop the batch before any
/// work.
#[test]
fn an_output_that_is_an_input_is_refused_alone_and_in_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.png");
    std::fs::copy(input("astronaut"), &a).unwrap();
    let before = std::fs::read(&a).unwrap();
    let link = dir.path().join("link.png");
    std::fs::hard_link(&a, &link).unwrap();
    for out in [&a, &link] {
        let run = code(
            tiny_run(&["edit", "--instruction", "x", "--image"])
                .arg(&a)
                .arg("-o")
                .arg(out),
            2,
        );
        one_line_naming(&run, &["refusing to overwrite an input"]);
        assert_eq!(std::fs::read(&a).unwrap(), before);
    }

    let jobs = dir.path().join("jobs.jsonl");
    write_lines(
        &jobs,
        &[
            json!({"image": ["a.png"], "instruction": "x", "output": "a.png"}),
            json!({"image": ["a.png"], "instruction": "y", "output": "b.png"}),
        ],
    );
    let run = code(
        tiny_run(&["edit", "--batch"])
            .arg(&jobs)
            .current_dir(dir.path()),
        1,
    );
    let results = json_lines(&run);
    assert_eq!(results[0]["ok"], false);
    assert_eq!(results[0]["output"], "a.png");
    assert!(results[0]["error"]
        .as_str()
        .unwrap()
        .contains("refusing to overwrite an input"));
    assert_eq!(results[1]["ok"], true);
    assert_eq!(std::fs::read(&a).unwrap(), before);
    assert!(dir.path().join("b.png").is_file());

    write_lines(
        &jobs,
        &[
            json!({"image": ["a.png"], "instruction": "x", "output": "c.png"}),
            json!({"image": ["a.png"], "instruction": "y", "output": "./c.png"}),
        ],
    );
    let run = code(
        tiny_run(&["edit", "--batch"])
            .arg(&jobs)
            .current_dir(dir.path()),
        2,
    );
    one_line_naming(&run, &["lines 1 and 2", "c.png"]);
    assert!(stdout(&run).is_empty(), "no job ran");
    assert!(!dir.path().join("c.png").exists());
}

/// `sh -c "umask U; exec ace ARGS"`, which must succeed.
fn with_umask<I, S>(umask: &str, args: I)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let bin = assert_cmd::cargo::cargo_bin("ace");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(bin)
        .env(
            "ACE_CACHE_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ace-cache"),
        )
        .args(["--device", "cpu"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Item 2: new outputs get 0666 less the umask, as `cp` gives them; a replaced file keeps its
/// mode (images, generated images, masks).
#[test]
fn new_outputs_follow_the_umask_and_replaced_ones_keep_their_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gray.png");
    let coffee = input("coffee");
    let analyze: [&std::ffi::OsStr; 5] = [
        "analyze".as_ref(),
        "gray".as_ref(),
        coffee.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ];
    with_umask("022", analyze);
    assert_eq!(mode(&out), 0o644);
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o640)).unwrap();
    with_umask("022", analyze);
    assert_eq!(mode(&out), 0o640, "a replaced file keeps its mode");

    let generated = dir.path().join("gen.png");
    let config = tiny_config();
    let generate: [&std::ffi::OsStr; 13] = [
        "generate".as_ref(),
        "--instruction".as_ref(),
        "x".as_ref(),
        "--width".as_ref(),
        "32".as_ref(),
        "--height".as_ref(),
        "32".as_ref(),
        "--steps".as_ref(),
        "1".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "-o".as_ref(),
        generated.as_os_str(),
    ];
    with_umask("027", generate);
    assert_eq!(mode(&generated), 0o640);

    let masks = dir.path().join("masks");
    with_umask(
        "002",
        [
            "data".as_ref(),
            "masks".as_ref(),
            "--size".as_ref(),
            "16x16".as_ref(),
            "--kind".as_ref(),
            "box".as_ref(),
            "--count".as_ref(),
            "1".as_ref(),
            "-o".as_ref(),
            masks.as_os_str(),
        ] as [&std::ffi::OsStr; 10],
    );
    assert_eq!(mode(&masks.join("000000.png")), 0o664);
}

/// Item 11: the format follows the extension; a folder is made only for a path ending in `/`,
/// an existing folder or several inputs; a format that contradicts the extension is an error.
#[test]
fn the_format_follows_the_extension_and_folders_are_made_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    for (name, format) in [
        ("out.bmp", image::ImageFormat::Bmp),
        ("x.tif", image::ImageFormat::Tiff),
        ("x.gif", image::ImageFormat::Gif),
        ("x.webp", image::ImageFormat::WebP),
        ("x.jpg", image::ImageFormat::Jpeg),
        ("noext", image::ImageFormat::Png),
    ] {
        let out = dir.path().join(name);
        code(
            ace()
                .args(["analyze", "gray"])
                .arg(input("coffee"))
                .arg("-o")
                .arg(&out),
            0,
        );
        assert!(out.is_file(), "{name} is not a file");
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(image::guess_format(&bytes).unwrap(), format, "{name}");
    }
    let folder = dir.path().join("made/");
    code(
        ace()
            .args(["analyze", "gray"])
            .arg(input("coffee"))
            .arg("-o")
            .arg(&folder),
        0,
    );
    assert_eq!(names(&folder), ["coffee.png"]);

    let wrong = dir.path().join("y.jpg");
    let run = code(
        ace()
            .args(["analyze", "gray", "--format", "png"])
            .arg(input("coffee"))
            .arg("-o")
            .arg(&wrong),
        2,
    );
    one_line_naming(&run, &["y.jpg", "contradicts"]);
    assert!(!wrong.exists());
    let unknown = dir.path().join("y.xyz");
    let run = code(
        ace()
            .args(["analyze", "gray"])
            .arg(input("coffee"))
            .arg("-o")
            .arg(&unknown),
        2,
    );
    one_line_naming(&run, &["y.xyz", "names no image format"]);

    // Generation: -o gen.jpg is a JPEG, not PNG bytes in a .jpg.
    let gen = dir.path().join("gen.jpg");
    code(
        tiny_run(&["edit", "--instruction", "x", "--image"])
            .arg(input("coffee"))
            .arg("-o")
            .arg(&gen),
        0,
    );
    let bytes = std::fs::read(&gen).unwrap();
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        image::ImageFormat::Jpeg
    );
}

/// Item 12: devices are written directly; a parent that is a file is named as such.
#[test]
fn special_files_are_written_directly_and_blocked_paths_are_named() {
    code(
        ace()
            .args(["analyze", "gray"])
            .arg(input("coffee"))
            .args(["-o", "/dev/null"]),
        0,
    );
    code(
        tiny_run(&["edit", "--instruction", "x", "--image"])
            .arg(input("coffee"))
            .args(["-o", "/dev/null"]),
        0,
    );
    let run = code(
        ace()
            .args(["analyze", "gray"])
            .arg(input("coffee"))
            .args(["-o", "/dev/stdout"]),
        0,
    );
    let img = image::load_from_memory(&run.stdout).unwrap();
    assert_eq!((img.width(), img.height()), (80, 64));

    // /dev/stdout leading to a regular file is written through, not replaced by a rename.
    let dir = tempfile::tempdir().unwrap();
    let redirected = dir.path().join("redirected.png");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" analyze gray \"$1\" -o /dev/stdout > \"$2\"")
        .arg(assert_cmd::cargo::cargo_bin("ace"))
        .arg(input("coffee"))
        .arg(&redirected)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(image::image_dimensions(&redirected).unwrap(), (80, 64));
    assert!(std::fs::symlink_metadata("/dev/stdout")
        .unwrap()
        .file_type()
        .is_symlink());

    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let run = code(
        ace()
            .args(["analyze", "gray"])
            .arg(input("coffee"))
            .arg("-o")
            .arg(file.join("sub/out.png")),
        1,
    );
    let err = one_line_naming(&run, &["f is a file, not a folder"]);
    assert!(!err.contains("os error 17"), "{err}");
    let run = code(
        tiny_run(&["edit", "--instruction", "x", "--image"])
            .arg(input("coffee"))
            .arg("-o")
            .arg(file.join("out.png")),
        2,
    );
    one_line_naming(&run, &["f is a file, not a folder"]);
}
