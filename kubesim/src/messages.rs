//! Realistic application log messages: access logs, JSON events, Java and
//! Go style lines, stack-trace fragments. About 180 bytes on average and,
//! like real logs, roughly 10x compressible (repeated structure, varying
//! numbers, ids and paths).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const PATHS: &[&str] = &[
    "/api/v1/orders",
    "/api/v1/users",
    "/api/v2/cart/items",
    "/healthz",
    "/metrics",
    "/api/v1/payments/authorize",
    "/static/js/app.bundle.js",
    "/login",
    "/api/v1/search",
    "/api/v1/inventory/sku",
    "/graphql",
    "/api/v1/sessions/refresh",
];
const METHODS: &[&str] = &["GET", "GET", "GET", "POST", "PUT", "DELETE", "PATCH"];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "curl/8.5.0", "kube-probe/1.29", "Go-http-client/2.0", "okhttp/4.12.0", "python-requests/2.31.0",
];
const SERVICES: &[&str] = &[
    "checkout",
    "inventory",
    "payments",
    "frontend",
    "auth",
    "search",
    "shipping",
];
const LEVELS: &[&str] = &["INFO", "INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"];
const CLASSES: &[&str] = &[
    "com.example.orders.OrderService",
    "org.springframework.web.servlet.DispatcherServlet",
    "com.zaxxer.hikari.pool.HikariPool",
    "io.grpc.netty.NettyServerHandler",
    "org.apache.kafka.clients.consumer.internals.ConsumerCoordinator",
];
const EVENTS: &[&str] = &[
    "request completed",
    "cache miss, loading from database",
    "retrying upstream call",
    "connection pool exhausted, waiting for a free connection",
    "user session refreshed",
    "message published to topic",
    "slow query detected",
    "payment authorized",
];

/// A deterministic generator of log messages.
pub struct Messages {
    rng: SmallRng,
    seq: u64,
}

impl Messages {
    /// A generator seeded with `seed` (same seed, same messages).
    pub fn new(seed: u64) -> Self {
        Messages {
            rng: SmallRng::seed_from_u64(seed),
            seq: 0,
        }
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.rng.random_range(0..xs.len())]
    }

    fn hex(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from_digit(self.rng.random_range(0..16), 16).unwrap_or('0'))
            .collect()
    }

    /// The next message.
    pub fn next_message(&mut self) -> String {
        self.seq += 1;
        match self.rng.random_range(0..5) {
            0 => {
                let ip = format!("10.{}.{}.{}", self.rng.random_range(0..4), self.rng.random_range(0..255), self.rng.random_range(1..255));
                let status = [200, 200, 200, 201, 204, 301, 404, 500][self.rng.random_range(0..8)];
                format!(
                    "{ip} - - \"{} {}?page={} HTTP/1.1\" {status} {} \"-\" \"{}\" rt={}ms",
                    self.pick(METHODS), self.pick(PATHS), self.rng.random_range(1..50),
                    self.rng.random_range(120..48000), self.pick(AGENTS), self.rng.random_range(1..900)
                )
            }
            1 => {
                let trace = self.hex(32);
                format!(
                    r#"{{"level":"{}","service":"{}","msg":"{}","trace_id":"{trace}","duration_ms":{},"user_id":{}}}"#,
                    self.pick(LEVELS).to_lowercase(), self.pick(SERVICES), self.pick(EVENTS),
                    self.rng.random_range(0..2000), self.rng.random_range(1000..99999)
                )
            }
            2 => format!(
                "{} [{}] {} - {} (order={} items={} tenant=t-{})",
                self.pick(LEVELS), format_args!("http-nio-8080-exec-{}", self.rng.random_range(1..64)),
                self.pick(CLASSES), self.pick(EVENTS), self.rng.random_range(100000..999999),
                self.rng.random_range(1..20), self.rng.random_range(1..40)
            ),
            3 => {
                let seq = self.seq;
                format!(
                "level={} ts_seq={} caller={}.go:{} msg=\"{}\" peer=10.0.{}.{}:{} bytes={}",
                self.pick(LEVELS).to_lowercase(), seq, self.pick(SERVICES), self.rng.random_range(10..400),
                self.pick(EVENTS), self.rng.random_range(0..255), self.rng.random_range(1..255),
                self.rng.random_range(30000..60000), self.rng.random_range(100..9000)
            )
            }
            _ => format!(
                "\tat {}.handle({}.java:{}) ~[app.jar:1.{}.{}] caused by java.net.SocketTimeoutException: Read timed out after {}ms",
                self.pick(CLASSES), self.pick(SERVICES), self.rng.random_range(20..900),
                self.rng.random_range(0..9), self.rng.random_range(0..30), self.rng.random_range(1000..30000)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_deterministic_and_about_180_bytes() {
        let mut a = Messages::new(7);
        let mut b = Messages::new(7);
        let mut total = 0;
        for _ in 0..1000 {
            let m = a.next_message();
            assert_eq!(m, b.next_message());
            total += m.len();
        }
        let avg = total / 1000;
        assert!((120..=240).contains(&avg), "average {avg}");
    }
}
