def test_health_is_200_with_redis_ok(client):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"redis": "ok"}
