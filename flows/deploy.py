"""The deploy flow: package the champion as a Bento, then serve it (health-checked, rolled back if not)."""

from prefect import flow

from tasks.deploy import deploy_task
from tasks.package import package_task


@flow(name="deploy", log_prints=True)
def deploy() -> dict:
    """package (through DVC), then deploy the Bento it built in place of the running one."""
    built = package_task()
    if built["bento"] is None:
        print(f"nothing to deploy: {built['reason']}")
        return built
    return deploy_task(built["bento"])


FLOW = deploy
