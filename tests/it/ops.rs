//! Operator-facing hardening: weak or placeholder secrets and wildcard origins over a public
//! suffix refused at config load (by `check-config`, `serve` and SIGHUP alike), the cookie
//! prefix warning, the dev CA's key files, and the certbot deploy hook's env file.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use serde_json::json;

use crate::support::{run_wsgate, sign_hs, write_config, Gateway, Settings, WAIT};
use wsgate::auth::unix_now;

/// 32 bytes: the shortest HS secret and admin key accepted off loopback.
const LONG_SECRET: &str = "0123456789abcdef0123456789abcdef";
/// What the gateway exits with for a configuration it refuses.
const EXIT_CONFIG: i32 = 78;
/// TEST-NET-1 (RFC 5737): no interface has it, so nothing is ever bound there. A gateway that
/// accepted the config would fail to bind (exit 1) rather than refuse it (78).
const UNBINDABLE: &str = "192.0.2.1:0";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `wsgate check-config` on the base settings changed by `f`.
fn check_config(f: impl FnOnce(&mut Settings)) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), f);
    run_wsgate(&["check-config", "--config", path.to_str().unwrap()], &[])
}

fn assert_refused(out: &Output, starts: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{err}");
    assert!(
        err.contains(&format!("configuration error: {starts}")),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Secrets

#[test]
fn check_config_refuses_a_short_hs_secret_off_loopback() {
    let short = &LONG_SECRET[1..];
    let out = check_config(|s| {
        s.set("server", "listen", json!("0.0.0.0:443"))
            .set("auth", "hs_secret", json!(short))
            .set("admin", "api_key", json!(LONG_SECRET));
    });
    assert_refused(&out, "auth.hs_secret: is 31 bytes");
    assert!(!stderr(&out).contains(short), "secret echoed");

    let out = check_config(|s| {
        s.set("server", "listen", json!("0.0.0.0:443"))
            .set("auth", "hs_secret", json!(LONG_SECRET))
            .set("admin", "api_key", json!(LONG_SECRET));
    });
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn check_config_refuses_a_short_secret_file_and_the_example_key_off_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("hs_secret");
    std::fs::write(&secret_file, "only-twenty-bytes-xx\n").expect("write");
    let out = check_config(|s| {
        s.set("admin", "listen", json!("0.0.0.0:9090"))
            .set("auth", "hs_secret", json!(""))
            .set("auth", "hs_secret_file", json!(secret_file))
            .set("admin", "api_key", json!(LONG_SECRET));
    });
    assert_refused(&out, "auth.hs_secret_file: is 20 bytes");

    let out = check_config(|s| {
        s.set("admin", "listen", json!("0.0.0.0:9090"))
            .set("auth", "hs_secret", json!(LONG_SECRET))
            .set("admin", "api_key", json!("change-me-too"));
    });
    assert_refused(
        &out,
        "admin.api_key: is the example value \"change-me-too\"",
    );
    assert!(
        stderr(&out).contains("admin.listen 0.0.0.0:9090 is not a loopback address"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn serve_refuses_a_short_api_key_off_loopback_before_binding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), |s| {
        s.set("admin", "listen", json!(UNBINDABLE))
            .set("auth", "hs_secret", json!(LONG_SECRET))
            .set("admin", "api_key", json!("a-short-admin-key"));
    });
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, run)
        .await
        .expect("serve exits")
        .expect("run wsgate");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{err}");
    assert!(
        err.contains("admin.api_key: is 17 characters, too short"),
        "{err}"
    );
    assert!(!err.contains("a-short-admin-key"), "key echoed: {err}");
}

#[tokio::test]
async fn sighup_refuses_a_placeholder_secret_and_keeps_the_old_one() {
    let gw = Gateway::start().await;
    let placeholder = "REPLACE-WITH-A-LONG-RANDOM-KEY";
    let mut next = gw.settings.clone();
    next.set("auth", "hs_secret", json!(placeholder));
    std::fs::write(&gw.config_path, next.toml()).expect("write config");
    let line = gw.sighup("reload refused").await;
    assert!(
        line.contains("auth.hs_secret: is the placeholder"),
        "{line}"
    );
    // The running secret still signs valid tokens; the placeholder signs none.
    gw.connect("alice").await;
    let forged = sign_hs(
        placeholder,
        "HS256",
        json!({"sub": "mallory", "exp": unix_now() + 3600}),
    );
    let mut req = gw.request();
    req.headers_mut()
        .insert("authorization", format!("Bearer {forged}").parse().unwrap());
    gw.refused(req, 401).await;
}

// ---------------------------------------------------------------------------------------------
// Origins

#[test]
fn check_config_refuses_a_wildcard_over_a_public_suffix() {
    for entry in ["https://*.co.uk", "https://*.github.io", "https://*.com"] {
        let out = check_config(|s| {
            s.set(
                "origin",
                "allowed",
                json!(["https://app.example.com", entry]),
            );
        });
        assert_refused(&out, "origin.allowed:");
        assert!(stderr(&out).contains("public suffix"), "{}", stderr(&out));
    }
    let out = check_config(|s| {
        s.set("origin", "allowed", json!(["https://*.example.co.uk"]));
    });
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------------
// Cookie name

const COOKIE_WARNING: &str = "auth.cookie_name \\\"session\\\" has no __Host- prefix";

#[test]
fn check_config_warns_about_a_cookie_name_without_the_host_prefix() {
    let out = check_config(|s| {
        s.set("auth", "cookie_name", json!("session"));
    });
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("wsgate: warning: auth.cookie_name \"session\" has no __Host- prefix"),
        "{err}"
    );

    let out = check_config(|s| {
        s.set("auth", "cookie_name", json!("__Host-session"));
    });
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[tokio::test]
async fn serve_logs_the_cookie_prefix_warning_at_start() {
    let gw = Gateway::start_with(|s| {
        s.set("auth", "cookie_name", json!("session"));
    })
    .await;
    let line = gw.wait_log(COOKIE_WARNING).await;
    assert!(line.contains("\"level\":\"WARN\""), "{line}");

    // Logged before "wsgate ready" when at all: none for a __Host- cookie.
    let gw = Gateway::start_with(|s| {
        s.set("auth", "cookie_name", json!("__Host-session"));
    })
    .await;
    assert!(!gw.logs().contains("__Host- prefix"), "{}", gw.logs());
}

// ---------------------------------------------------------------------------------------------
// gen-cert

#[test]
fn gen_cert_makes_existing_key_files_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["ca.key", "server.key", "ca.crt"] {
        let path = dir.path().join(name);
        std::fs::write(&path, "old").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let out = run_wsgate(&["gen-cert", "--out", dir.path().to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("ca.key"), 0o600, "ca.key");
    assert_eq!(mode("server.key"), 0o600, "server.key");
    assert_eq!(mode("ca.crt"), 0o644, "ca.crt");
    let key = std::fs::read_to_string(dir.path().join("ca.key")).expect("read");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
}

// ---------------------------------------------------------------------------------------------
// certbot deploy hook

/// Writes an executable shell script.
fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn id(flag: &str) -> String {
    let out = std::process::Command::new("id")
        .arg(flag)
        .output()
        .expect("id");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn deploy_hook_reads_the_env_file_without_running_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // A certbot lineage: live/<name>/*.pem are links into archive/<name>/.
    let archive = d.join("letsencrypt/archive/chat.test");
    let live = d.join("letsencrypt/live/chat.test");
    std::fs::create_dir_all(&archive).expect("mkdir");
    std::fs::create_dir_all(&live).expect("mkdir");
    for (file, version) in [("fullchain", "fullchain1"), ("privkey", "privkey1")] {
        std::fs::write(archive.join(format!("{version}.pem")), "pem").expect("write");
        std::os::unix::fs::symlink(
            format!("../../archive/chat.test/{version}.pem"),
            live.join(format!("{file}.pem")),
        )
        .expect("symlink");
    }
    let config = d.join("wsgate.toml");
    std::fs::write(&config, "").expect("write");
    // Stand-ins that record what the hook asked of them.
    let fake_wsgate = d.join("wsgate");
    script(
        &fake_wsgate,
        &format!(
            "echo \"$*\" > {args}\nenv > {env}",
            args = d.join("args").display(),
            env = d.join("env").display()
        ),
    );
    let fake_systemctl = d.join("systemctl");
    script(
        &fake_systemctl,
        &format!("echo \"$*\" >> {}", d.join("systemctl.log").display()),
    );
    let p = d.display();
    let env_file = d.join("wsgate.env");
    std::fs::write(
        &env_file,
        format!(
            "# WSGATE__LOG__FORMAT=$(touch {p}/pwned-comment)\n\
             WSGATE__ADMIN__API_KEY=$(touch {p}/pwned-dollar)\n\
             WSGATE__AUTH__HS_SECRET=\"`touch {p}/pwned-backtick`\"\n\
             \x20 WSGATE__LOG__LEVEL='warn,wsgate=debug'\n\
             WSGATE__SERVER__LISTEN=127.0.0.1:8443; touch {p}/pwned-semicolon\n\
             OTHER_SETTING=$(touch {p}/pwned-other)\n\
             touch {p}/pwned-line\n\
             $(touch {p}/pwned-key)=x\n\
             WSGATE__ORIGIN__ALLOWED=https://a.example,https://b.example"
        ),
    )
    .expect("write env file");

    let out = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/certbot-deploy-hook.sh"))
        .env("RENEWED_LINEAGE", &live)
        .env("WSGATE_CONFIG", &config)
        .env("WSGATE_BIN", &fake_wsgate)
        .env("WSGATE_SYSTEMCTL", &fake_systemctl)
        .env("WSGATE_ENV_FILE", &env_file)
        .env("WSGATE_WORKDIR", d)
        .env("WSGATE_USER", id("-un"))
        .env("WSGATE_GROUP", id("-gn"))
        .output()
        .expect("run the hook");
    let pwned: Vec<String> = std::fs::read_dir(d)
        .expect("read dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("pwned"))
        .collect();
    assert!(pwned.is_empty(), "the env file ran: {pwned:?}");
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("reloaded wsgate"), "{log}");

    let args = std::fs::read_to_string(d.join("args")).expect("check-config ran");
    assert_eq!(
        args.trim(),
        format!("check-config --config {}", config.display())
    );
    let env: HashMap<String, String> = std::fs::read_to_string(d.join("env"))
        .expect("env")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let wsgate_env = |key: &str| env.get(key).map(String::as_str);
    assert_eq!(
        wsgate_env("WSGATE__ADMIN__API_KEY"),
        Some(format!("$(touch {p}/pwned-dollar)").as_str())
    );
    assert_eq!(
        wsgate_env("WSGATE__AUTH__HS_SECRET"),
        Some(format!("`touch {p}/pwned-backtick`").as_str())
    );
    assert_eq!(wsgate_env("WSGATE__LOG__LEVEL"), Some("warn,wsgate=debug"));
    assert_eq!(
        wsgate_env("WSGATE__SERVER__LISTEN"),
        Some(format!("127.0.0.1:8443; touch {p}/pwned-semicolon").as_str())
    );
    assert_eq!(
        wsgate_env("WSGATE__ORIGIN__ALLOWED"),
        Some("https://a.example,https://b.example"),
        "the last line, without a newline"
    );
    assert_eq!(wsgate_env("WSGATE__LOG__FORMAT"), None, "a comment");
    assert_eq!(wsgate_env("OTHER_SETTING"), None, "not a WSGATE__ key");

    let calls = std::fs::read_to_string(d.join("systemctl.log")).expect("systemctl called");
    assert_eq!(calls, "is-active --quiet wsgate\nreload wsgate\n");
    // The hook still did its own job on the lineage.
    let key_mode = std::fs::metadata(archive.join("privkey1.pem"))
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o640);
}
