# a3s-gateway quick start (runnable): `make run` starts this with two demo LLM backends on :8001 and :8002.
# The README's quick start adds rate limiting, JWT auth, health checks and scale-to-zero on top of this;
# those blocks are validated today and run once their features land.
entrypoints "web" {
  address = "127.0.0.1:8080"
}

routers "llm" {
  rule    = "PathPrefix(`/v1`)"
  service = "llm-backend"
}

services "llm-backend" {
  load_balancer {
    strategy = "least-connections"
    servers  = [
      { url = "http://127.0.0.1:8001" },
      { url = "http://127.0.0.1:8002" }
    ]
  }
}
