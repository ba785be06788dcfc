//! How command-line paths become lease keys, and where the workspace and its database are.

use super::support::Workspace;

fn key_of(ws: &Workspace, dir: &str, path: &str) -> String {
    let run = ws.run_in(dir, "alice", &["--json", "status", path]);
    run.expect(0);
    run.json()["path"].as_str().unwrap().to_string()
}

#[test]
fn paths_are_relative_to_the_current_directory() {
    let ws = Workspace::new();
    ws.mkdir("src/deep");
    let run = ws.run_in("src", "alice", &["--json", "acquire", "main.rs"]);
    run.expect(0);
    assert_eq!(run.json()["leases"][0]["file_path"], "src/main.rs");
    // The same file named from elsewhere is the same lease.
    assert_eq!(
        ws.json("bob", &["acquire", "src/main.rs"], 3)["error"]["code"],
        "conflict"
    );
    assert_eq!(key_of(&ws, "src/deep", "../lib.rs"), "src/lib.rs");
    assert_eq!(key_of(&ws, "src/deep", "./x/../y.rs"), "src/deep/y.rs");
    let absolute = ws.root().join("src/abs.rs");
    assert_eq!(
        key_of(&ws, "src/deep", absolute.to_str().unwrap()),
        "src/abs.rs"
    );
}

#[test]
fn directories_and_trailing_slashes_are_folder_leases() {
    let ws = Workspace::new();
    ws.mkdir("src/deep");
    assert_eq!(key_of(&ws, "", "src"), "src/");
    assert_eq!(key_of(&ws, "", "src/deep/"), "src/deep/");
    assert_eq!(key_of(&ws, "", "not-yet/"), "not-yet/");
    assert_eq!(key_of(&ws, "", "not-yet"), "not-yet");
    assert_eq!(key_of(&ws, "src", "."), "src/");
    assert_eq!(key_of(&ws, "src/deep", ".."), "src/");
    // A folder lease covers the files below it.
    ws.run_in("src", "alice", &["acquire", "."]).expect(0);
    let document = ws.json("bob", &["acquire", "src/deep/x.rs"], 3);
    assert_eq!(document["error"]["holders"][0]["file_path"], "src/");
}

#[test]
fn paths_outside_the_root_and_the_root_itself_are_refused() {
    let ws = Workspace::new();
    ws.mkdir("src");
    for (dir, path) in [
        ("", "../outside.rs"),
        ("src", "../../x"),
        ("", "/etc/passwd"),
        ("", "."),
        ("src", ".."),
    ] {
        let run = ws.run_in(dir, "alice", &["--json", "acquire", path]);
        run.expect(2);
        assert_eq!(run.error_code(), "invalid_input", "{path}");
        assert_eq!(run.json()["error"]["what"], "path");
    }
    let run = ws.run("alice", &["acquire", "../outside.rs"]);
    assert!(
        run.stderr.contains("outside the workspace root"),
        "{:?}",
        run.stderr
    );
    assert!(run.stderr.contains("help: "), "{:?}", run.stderr);
    assert!(ws.active_leases().is_empty());
    assert!(ws.history().is_empty());
}

#[test]
fn a_symlinked_directory_maps_to_its_target() {
    let ws = Workspace::new();
    ws.mkdir("src");
    std::os::unix::fs::symlink(ws.root().join("src"), ws.root().join("link")).unwrap();
    assert_eq!(key_of(&ws, "", "link/main.rs"), "src/main.rs");
}
