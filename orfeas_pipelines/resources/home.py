"""Where jobs, meshes and the outbox live."""

import dagster as dg

from orfeas_pipelines.lib.home import OrfeasHome


class OrfeasHomeResource(dg.ConfigurableResource):
    """The `$ORFEAS_HOME` folder shared by agents, the sensor and the assets."""

    root: str = ""

    @property
    def home(self) -> OrfeasHome:
        """An empty root means `$ORFEAS_HOME`, else `./orfeas_data`."""
        return OrfeasHome.at(self.root or None).ensure()

    def run_config(self) -> dict:
        """Run config that gives a run this home explicitly, whatever its process's environment."""
        return {"resources": {"orfeas_home": {"config": {"root": str(self.home.root)}}}}
