"""A single-node HDFS: a real NameNode and DataNode in one MiniDFSCluster JVM.

Runs Hadoop's own launcher `org.apache.hadoop.mapreduce.MiniHadoopClusterManager -nomr` from
`hadoop-client-minicluster` (the same Hadoop 3.5.0 that pyspark bundles). The NameNode is
formatted on the first start only, so files survive `infra down` then `infra up`.

Listeners: the NameNode's RPC and HTTP (WebHDFS) servers bind to `bind_host` (its `*-bind-host`
keys); MiniDFSCluster itself puts the DataNode's data transfer, IPC and HTTP servers on
127.0.0.1 (ephemeral ports) whatever the configuration says, so blocks are served to this machine only.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from btcstream.infra import addresses, artifacts
from btcstream.infra.java import java_executable
from btcstream.infra.service import LocalService, log4j2_config

HEAP = "-Xmx768m"
_FORMATTED_MARKER = ".formatted"


class Hdfs(LocalService):
    """NameNode RPC on the storage root's port (9000), WebHDFS/HTTP on `webhdfs_port` (9870), both on `bind_host`."""

    name = "hdfs"

    @property
    def ports(self) -> dict[str, int]:
        return {"namenode-rpc": self.settings.hdfs_port or 9000, "webhdfs": self.settings.webhdfs_port}

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.home / "log4j2.properties").write_text(log4j2_config("org.apache.hadoop.hdfs.MiniDFSCluster"))

    @property
    def formatted(self) -> bool:
        return (self.home / _FORMATTED_MARKER).exists()

    def command(self) -> list[str]:
        ports = self.ports
        return [
            java_executable(), HEAP, "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dbtcstream.service={self.marker}", f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp", artifacts.classpath(self.settings, "hdfs"),
            "org.apache.hadoop.mapreduce.MiniHadoopClusterManager", "-nomr",
            *([] if self.formatted else ["-format"]),
            "-nnport", str(ports["namenode-rpc"]), "-nnhttpport", str(ports["webhdfs"]), "-datanodes", "1",
            *[arg for key, value in self.hadoop_conf().items() for arg in ("-D", f"{key}={value}")],
            "-writeConfig", str(self.home / "hdfs-client-config.xml"),
        ]

    def hadoop_conf(self) -> dict[str, str]:
        """The `-D` settings: storage, single-node behaviour and where the NameNode's servers bind."""
        bind = self.settings.bind_host
        return {
            "hdfs.minidfs.basedir": str(self.data_dir),
            "dfs.permissions.enabled": "false",
            "dfs.replication": "1",
            "dfs.namenode.safemode.extension": "0",
            "dfs.datanode.hostname": "127.0.0.1",
            # MiniDFSCluster sets the NameNode's addresses to 127.0.0.1:<port>; these say where it binds.
            "dfs.namenode.rpc-bind-host": bind,
            "dfs.namenode.servicerpc-bind-host": bind,
            "dfs.namenode.lifeline.rpc-bind-host": bind,
            "dfs.namenode.http-bind-host": bind,
            "dfs.namenode.https-bind-host": bind,
        }

    def after_healthy(self) -> None:
        (self.home / _FORMATTED_MARKER).touch()

    def health(self) -> tuple[bool, str]:
        """Healthy when WebHDFS lists `/`, a DataNode is live and the NameNode is out of safe mode."""
        base = f"http://{addresses.url_host(addresses.connect_host(self.settings.bind_host))}:{self.ports['webhdfs']}"
        try:
            with urllib.request.urlopen(f"{base}/webhdfs/v1/?op=LISTSTATUS", timeout=3) as answer:
                listing = json.load(answer)["FileStatuses"]["FileStatus"]
            query = "Hadoop:service=NameNode,name=FSNamesystemState"
            with urllib.request.urlopen(f"{base}/jmx?qry={query}", timeout=3) as answer:
                state = json.load(answer)["beans"][0]
        except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError) as error:
            return False, f"WebHDFS not answering ({type(error).__name__})"
        live = int(state.get("NumLiveDataNodes", 0))
        if live < 1:
            return False, "NameNode up, no live DataNode yet"
        if state.get("FSState") != "Operational":
            return False, f"NameNode in {state.get('FSState')}"
        return True, f"listing OK ({len(listing)} entries under /), {live} live DataNode"
