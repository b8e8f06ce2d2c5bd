from startd_health.cli import run

run()
