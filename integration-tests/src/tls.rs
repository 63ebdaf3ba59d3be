//! A certificate authority of a test's own, made with `openssl` (which `scripts/test.sh`
//! installs), and the certificates it signs: a server's for 127.0.0.1 and localhost, and a
//! client's. For the servers tests run with TLS (Mosquitto, etcd).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestCa {
    /// The CA certificate (PEM): what a client trusts.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate (CN `hstream-client`) for servers that ask for one.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestCa {
    /// Makes the CA and its certificates in `dir` (valid two days).
    pub fn make(dir: &Path) -> TestCa {
        let sh = "set -e; \
             openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.pem; \
             openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr; \
             printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth,clientAuth\\n' > server.ext; \
             openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem; \
             openssl req -newkey rsa:2048 -nodes -subj /CN=hstream-client -keyout client.key -out client.csr; \
             printf 'extendedKeyUsage=clientAuth\\n' > client.ext; \
             openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out client.pem";
        let out = Command::new("sh")
            .arg("-c")
            .arg(sh)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "making certificates failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestCa {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}
