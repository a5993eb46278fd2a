from tests.factories import Factory


def test_job_lifecycle(client, factory: Factory) -> None:
    customer = factory.customer()
    driver = factory.driver()
    job = factory.job(customer)
    assert job["status"] == "pending"
    assert factory.offer(job["id"]) == [driver.id]
    feed = client.get("/api/v1/drivers/me/offers", headers=driver.headers).json
    assert [o["job"]["id"] for o in feed["offers"]] == [job["id"]]
    accepted = client.post(f"/api/v1/jobs/{job['id']}/accept", headers=driver.headers)
    assert accepted.status_code == 200, accepted.json
    assert accepted.json["driver"] == {"id": driver.id, "name": driver.name}
