"""A single-node HDFS: Hadoop's own NameNode and DataNode daemons, each in a JVM of its own.

Both run from `hadoop-client-minicluster` (the same Hadoop 3.5.0 that pyspark bundles), with the
daemons' own main classes (`org.apache.hadoop.hdfs.server.namenode.NameNode`, `...datanode.DataNode`)
and a configuration written under `<state_dir>/hdfs/conf` (`core-site.xml`, `hdfs-site.xml`, first on
the classpath). Two processes, so each can be stopped and started alone, as on a cluster: the chaos
run stops the DataNode while the NameNode stays up, and the other way round.

The NameNode is formatted (its own JVM, `-format -nonInteractive`) on the first start only, so files
survive `infra down` then `infra up`. Storage directories are those the earlier one-JVM
MiniDFSCluster used (`data/name-0-1`, `data/name-0-2`, `data/data/data1`, `data/data/data2`), so a
state directory written by it is read as it is.

Listeners, all on `bind_host` (127.0.0.1 by default): the NameNode's RPC (the storage root's port,
9000) and HTTP/WebHDFS (`webhdfs_port`, 9870) servers (its `*-bind-host` keys); the DataNode's HTTP
server on `webhdfs_port - 6` (9864, Hadoop's default pair) and its data transfer and IPC servers on
ephemeral ports (as MiniDFSCluster did: two stacks on one machine never collide). The DataNode
registers as 127.0.0.1, so clients on this machine read blocks from it directly.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from xml.sax.saxutils import escape

from btcstream.errors import InfraError
from btcstream.infra import addresses, artifacts
from btcstream.infra.gc_log import gc_log_options
from btcstream.infra.java import java_executable
from btcstream.infra.service import LocalService, log4j2_config
from btcstream.settings import Settings

NAMENODE_HEAP = "-Xmx512m"
DATANODE_HEAP = "-Xmx384m"
DATANODE_HTTP_OFFSET = -6  # the DataNode's HTTP port is webhdfs_port - 6: 9864 beside 9870, as Hadoop's defaults
_FORMATTED_MARKER = ".formatted"
NAMENODE_MAIN = "org.apache.hadoop.hdfs.server.namenode.NameNode"
DATANODE_MAIN = "org.apache.hadoop.hdfs.server.datanode.DataNode"


def hdfs_home(settings: Settings) -> Path:
    """The state directory both daemons share: configuration, logs, pid files, `data/`."""
    return settings.state_dir / "hdfs"


def hdfs_services(settings: Settings) -> list[LocalService]:
    """The two daemons in start order (stop them in reverse)."""
    return [NameNode(settings), DataNode(settings)]


class _HdfsDaemon(LocalService):
    """What both daemons share: the home, the configuration files, the command line."""

    main_class: str
    heap: str

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.home = hdfs_home(settings)

    @property
    def marker(self) -> str:
        return str(self.home / self.name)

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def conf_dir(self) -> Path:
        return self.home / "conf"

    @property
    def webhdfs_base(self) -> str:
        host = addresses.url_host(addresses.connect_host(self.settings.bind_host))
        return f"http://{host}:{self.settings.webhdfs_port}"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "core-site.xml").write_text(_site_xml(core_site(self.settings)))
        (self.conf_dir / "hdfs-site.xml").write_text(_site_xml(hdfs_site(self.settings)))
        (self.home / f"{self.name}-log4j2.properties").write_text(log4j2_config(self.main_class))

    def java(self, *arguments: str) -> list[str]:
        """A java command line running `main_class` with our configuration first on the classpath."""
        return [java_executable(), self.heap, "-XX:+UseG1GC", *gc_log_options(self.gc_log_file),
                "-Djava.awt.headless=true",
                f"-Dbtcstream.service={self.marker}",
                f"-Dlog4j2.configurationFile={self.home / f'{self.name}-log4j2.properties'}",
                f"-Dhadoop.log.dir={self.home}",
                "-cp", f"{self.conf_dir}:{artifacts.classpath(self.settings, 'hdfs')}", self.main_class, *arguments]

    def command(self) -> list[str]:
        return self.java()

    def namenode_state(self) -> dict:
        """The NameNode's FSNamesystemState bean (live DataNodes, safe mode); raises OSError/ValueError."""
        query = "Hadoop:service=NameNode,name=FSNamesystemState"
        with urllib.request.urlopen(f"{self.webhdfs_base}/jmx?qry={query}", timeout=3) as answer:
            return json.load(answer)["beans"][0]


class NameNode(_HdfsDaemon):
    """NameNode RPC on the storage root's port (9000), WebHDFS/HTTP on `webhdfs_port` (9870)."""

    name = "hdfs-namenode"
    main_class = NAMENODE_MAIN
    heap = NAMENODE_HEAP

    @property
    def ports(self) -> dict[str, int]:
        return {"namenode-rpc": self.settings.hdfs_port or 9000, "webhdfs": self.settings.webhdfs_port}

    @property
    def formatted(self) -> bool:
        return (self.home / _FORMATTED_MARKER).exists()

    def prepare(self) -> None:
        super().prepare()
        if not self.formatted:
            self._format()

    def _format(self) -> None:
        """Format the name directories once (a JVM that exits); -nonInteractive never wipes existing ones."""
        done = subprocess.run(self.java("-format", "-nonInteractive", "-clusterid", "btcstream"),
                              capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise InfraError(f"formatting the HDFS NameNode in {self.data_dir} failed (exit {done.returncode}):\n{tail}")
        (self.home / _FORMATTED_MARKER).touch()

    def health(self) -> tuple[bool, str]:
        """Healthy when WebHDFS lists `/` (the DataNode's own health says when blocks can be written)."""
        try:
            with urllib.request.urlopen(f"{self.webhdfs_base}/webhdfs/v1/?op=LISTSTATUS", timeout=3) as answer:
                listing = json.load(answer)["FileStatuses"]["FileStatus"]
            state = self.namenode_state()
        except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError) as error:
            return False, f"WebHDFS not answering ({type(error).__name__})"
        return True, (f"listing OK ({len(listing)} entries under /), {int(state.get('NumLiveDataNodes', 0))} live "
                      f"DataNode(s), {'out of' if state.get('FSState') == 'Operational' else 'in'} safe mode")


class DataNode(_HdfsDaemon):
    """The one DataNode: HTTP on `webhdfs_port - 6` (9864); data transfer and IPC on ephemeral ports."""

    name = "hdfs-datanode"
    main_class = DATANODE_MAIN
    heap = DATANODE_HEAP

    @property
    def ports(self) -> dict[str, int]:
        return {"datanode-http": datanode_http_port(self.settings)}

    def health(self) -> tuple[bool, str]:
        """Healthy when this DataNode (asked itself) is registered with the NameNode and heartbeating,
        and the NameNode has left safe mode (its blocks are reported): files can be read and written."""
        host = addresses.url_host(addresses.connect_host(self.settings.bind_host))
        query = "Hadoop:service=DataNode,name=DataNodeInfo"
        try:
            with urllib.request.urlopen(f"http://{host}:{self.ports['datanode-http']}/jmx?qry={query}",
                                        timeout=3) as answer:
                info = json.load(answer)["beans"][0]
            actors = json.loads(info.get("BPServiceActorInfo") or "[]")
        except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError) as error:
            return False, f"DataNode not answering ({type(error).__name__})"
        if not any(actor.get("ActorState") == "RUNNING" for actor in actors):
            return False, "DataNode up, not registered with the NameNode yet"
        try:
            state = self.namenode_state()
        except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError) as error:
            return False, f"registered, NameNode not answering ({type(error).__name__})"
        if state.get("FSState") != "Operational":
            return False, f"registered, NameNode in {state.get('FSState')}"
        return True, f"registered with the NameNode, {int(state.get('NumLiveDataNodes', 0))} live DataNode(s)"


def datanode_http_port(settings: Settings) -> int:
    return settings.webhdfs_port + DATANODE_HTTP_OFFSET


def core_site(settings: Settings) -> dict[str, str]:
    """core-site.xml: the default file system (the NameNode, reached through loopback) and scratch space."""
    host = addresses.url_host(addresses.connect_host(settings.bind_host))
    return {"fs.defaultFS": f"hdfs://{host}:{settings.hdfs_port or 9000}",
            "hadoop.tmp.dir": str(hdfs_home(settings) / "data" / "tmp")}


def hdfs_site(settings: Settings) -> dict[str, str]:
    """hdfs-site.xml: storage, single-node behaviour and where each server binds."""
    bind = settings.bind_host
    connect = addresses.url_host(addresses.connect_host(bind))
    data = hdfs_home(settings) / "data"
    return {
        # The directories the one-JVM MiniDFSCluster used: its state directories keep working.
        "dfs.namenode.name.dir": f"file://{data / 'name-0-1'},file://{data / 'name-0-2'}",
        "dfs.datanode.data.dir": f"file://{data / 'data' / 'data1'},file://{data / 'data' / 'data2'}",
        "dfs.permissions.enabled": "false",
        "dfs.replication": "1",
        "dfs.namenode.safemode.extension": "0",
        "dfs.namenode.rpc-address": f"{connect}:{settings.hdfs_port or 9000}",
        "dfs.namenode.http-address": f"{connect}:{settings.webhdfs_port}",
        "dfs.namenode.rpc-bind-host": bind,
        "dfs.namenode.servicerpc-bind-host": bind,
        "dfs.namenode.lifeline.rpc-bind-host": bind,
        "dfs.namenode.http-bind-host": bind,
        "dfs.namenode.https-bind-host": bind,
        "dfs.datanode.hostname": "127.0.0.1",
        "dfs.datanode.address": f"{addresses.url_host(bind)}:0",
        "dfs.datanode.ipc.address": f"{addresses.url_host(bind)}:0",
        "dfs.datanode.http.address": f"{addresses.url_host(bind)}:{datanode_http_port(settings)}",
        # A restarted DataNode is back within seconds; the NameNode need not wait 10 min to notice a dead one.
        "dfs.namenode.heartbeat.recheck-interval": "30000",
    }


def _site_xml(properties: dict[str, str]) -> str:
    body = "".join(f"  <property><name>{escape(key)}</name><value>{escape(value)}</value></property>\n"
                   for key, value in properties.items())
    return f'<?xml version="1.0"?>\n<configuration>\n{body}</configuration>\n'
