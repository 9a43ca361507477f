# The product README's full example, made runnable (`make run CONFIG=examples/readme-full.hcl`). As printed in the
# README it is rejected by validation, by design (SPEC §1.3): its mirror target is not defined and its rollout has
# no revisions. Here, with the fewest changes that make it run on one machine:
#   - ports 8080/8443 on 127.0.0.1 instead of 80/443, and plain HTTP redirected to HTTPS;
#   - a certificate for localhost in certs/ (run_demo.py makes one when it is missing; curl -k trusts it);
#   - the two servers become revisions v1 (:8001) and v2 (:8002), which the rollout shifts between;
#   - the shadow model llm-canary (:8003) exists;
#   - the executor is "static" (the servers as they are) instead of "box": no A3S Box API runs here;
#   - the provider watches this file (no /etc/gateway/conf.d/ directory here).
# try: curl -k --resolve api.example.com:8443:127.0.0.1 -H 'Authorization: Bearer {TOKEN}' https://api.example.com:8443/v1/models
# try: curl -s http://127.0.0.1:9901/api/gateway/services    (the rollout advances 10 points a minute)
entrypoints "web"       { address = "127.0.0.1:8080"; redirect { entrypoint = "websecure" } }
entrypoints "websecure" {
  address = "127.0.0.1:8443"
  tls { cert_file = "certs/localhost.pem"; key_file = "certs/localhost-key.pem" }
}

routers "llm-api" {
  rule        = "(Host(`api.example.com`) || Host(`localhost`)) && PathPrefix(`/v1`)"
  service     = "llm-service"
  entrypoints = ["websecure"]
  middlewares  = ["auth-jwt", "rate-limit", "circuit-breaker"]
}

services "llm-service" {
  load_balancer {
    strategy = "least-connections"
    health_check { path = "/health"; interval = "10s" }
  }

  revisions = [
    { name = "v1", traffic_percent = 100, servers = [{ url = "http://127.0.0.1:8001" }] },
    { name = "v2", traffic_percent = 0, servers = [{ url = "http://127.0.0.1:8002" }] }
  ]

  # Mirror 5% of traffic to a new model for shadow testing
  mirror { service = "llm-canary"; percentage = 5 }

  # Scale to zero when idle — buffer requests during cold start
  scaling {
    min_replicas          = 0
    max_replicas          = 8
    container_concurrency = 10
    target_utilization    = 0.7
    buffer_enabled        = true
    executor              = "static"
  }

  # Shift traffic from v1 to v2 over 10 steps, 1 minute apart
  # Auto-rollback if error rate > 5% or p99 > 5s
  rollout {
    from                 = "v1"
    to                   = "v2"
    step_percent         = 10
    step_interval_secs   = 60
    error_rate_threshold = 0.05
    latency_threshold_ms = 5000
  }
}

services "llm-canary" {
  load_balancer {
    servers = [{ url = "http://127.0.0.1:8003" }]
  }
}

middlewares "auth-jwt"       { type = "jwt"; value = "${JWT_SECRET}" }
middlewares "rate-limit"     { type = "rate-limit"; rate = 100; burst = 20 }
middlewares "circuit-breaker" {
  type              = "circuit-breaker"
  failure_threshold = 5
  cooldown_secs     = 30
  success_threshold = 2
}

providers {
  file { watch = true }
}
