package org.eslp.opensearch;

import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.index.mapper.MapperExtrasPlugin;
import org.opensearch.ingest.common.IngestCommonPlugin;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.painless.PainlessPlugin;
import org.opensearch.plugins.Plugin;
import org.opensearch.transport.Netty4Plugin;

/**
 * Starts one real OpenSearch node in this JVM, with the modules a log shipper's tests need loaded
 * from the classpath (the distribution loads them from its modules/ folder instead).
 *
 * Arguments are node settings, `key=value`, as `-E` takes them, e.g. `cluster.name=c
 * node.name=n1 path.home=/tmp/n1 http.port=9200 transport.port=9300 discovery.type=single-node`.
 * `path.home` is required. The defaults below (loopback only, disk watermarks off) suit a test
 * machine; any of them can be overridden by an argument.
 *
 * The node runs until the JVM gets SIGTERM/SIGINT (closed cleanly) or SIGKILL (a crash, as the
 * failover tests want).
 */
public final class Launcher {
    /** The modules the distribution would load; all are plain jars on Maven Central. */
    private static final List<Class<? extends Plugin>> MODULES = List.of(
        Netty4Plugin.class,         // HTTP and transport layers
        IngestCommonPlugin.class,   // ingest pipelines and their processors
        CommonAnalysisPlugin.class, // analyzers that index templates commonly name
        PainlessPlugin.class,       // scripts (the `script` ingest processor, scripted updates)
        MapperExtrasPlugin.class    // scaled_float, rank_feature, search_as_you_type...
    );

    /** Node is built through a protected constructor that takes classpath plugins. */
    private static final class ClasspathNode extends Node {
        ClasspathNode(Environment env) {
            super(env, MODULES, true);
        }
    }

    public static void main(String[] args) throws Exception {
        Settings.Builder given = Settings.builder();
        for (String arg : args) {
            int eq = arg.indexOf('=');
            if (eq <= 0) {
                throw new IllegalArgumentException("expected key=value, got `" + arg + "`");
            }
            given.put(arg.substring(0, eq), arg.substring(eq + 1));
        }
        Settings input = given.build();
        String home = input.get("path.home");
        if (home == null) {
            throw new IllegalArgumentException("path.home=DIR is required");
        }
        Settings settings = Settings.builder()
            .put("network.host", "127.0.0.1")
            .put("path.logs", Path.of(home, "logs").toString())
            // A test machine's disk must never turn indices read-only or stop shard allocation.
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put(input)
            .build();

        // Logging comes from log4j2.properties in this jar (INFO to stdout); OpenSearch's own
        // configureWithoutConfig would install a configuration without any appender.
        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName(settings.get("node.name", "node"));

        Environment env = InternalSettingsPreparer.prepareEnvironment(
            settings, Map.of(), null, () -> settings.get("node.name", "node"));
        Node node = new ClasspathNode(env);

        // Every OpenSearch thread is a daemon thread: this latch is what keeps the JVM alive.
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(10, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }, "launcher-shutdown"));
        node.start();
        exitWithParent();
        stopped.await();
    }

    /**
     * A test harness that names itself in ESLP_PARENT_PID is watched: when it dies without
     * stopping this node (killed, or its process aborted before its cleanup ran), the node
     * closes too, so no JVM outlives the tests that started it.
     */
    private static void exitWithParent() {
        String parent = System.getenv("ESLP_PARENT_PID");
        if (parent == null || parent.isEmpty()) {
            return;
        }
        ProcessHandle.of(Long.parseLong(parent.trim())).ifPresentOrElse(
            handle -> handle.onExit().thenRun(() -> System.exit(0)),
            () -> System.exit(0));
    }
}
