//! Installs the GraphiQL playground's npm packages (pinned by
//! `playground/package-lock.json`) into the build folder, so the binary can
//! embed them and serve the playground with no internet access at run time.
//! Needs `npm` and the npm registry at build time, once per lock change.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

fn main() {
    println!("cargo:rerun-if-changed=playground/package.json");
    println!("cargo:rerun-if-changed=playground/package-lock.json");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("playground");
    let lock =
        fs::read("playground/package-lock.json").expect("playground/package-lock.json is readable");
    let stamp = out.join("installed-lock.json");
    let marker = out.join("node_modules/graphiql/dist/index.umd.js");
    if !(marker.is_file() && fs::read(&stamp).ok().as_deref() == Some(&lock[..])) {
        install(&out);
        fs::write(&stamp, &lock).expect("write stamp");
    }
    println!(
        "cargo:rustc-env=PLAYGROUND_MODULES={}",
        out.join("node_modules").display()
    );
}

fn install(out: &Path) {
    fs::create_dir_all(out).expect("create the playground build folder");
    for file in ["package.json", "package-lock.json"] {
        fs::copy(Path::new("playground").join(file), out.join(file)).expect("copy package files");
    }
    let status = Command::new("npm")
        .args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--loglevel=error",
        ])
        .current_dir(out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "`npm ci` for the GraphiQL playground failed ({s}); it needs the npm registry once per \
             change of playground/package-lock.json"
        ),
        Err(e) => {
            panic!("cannot run npm ({e}); install Node.js and npm (Debian: apt-get install npm)")
        }
    }
}
