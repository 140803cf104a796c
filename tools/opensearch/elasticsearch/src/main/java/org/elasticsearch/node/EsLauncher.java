package org.elasticsearch.node;

import java.nio.file.Path;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.function.Predicate;
import java.util.function.Supplier;

import org.elasticsearch.Build;
import org.elasticsearch.client.internal.node.NodeClient;
import org.elasticsearch.cluster.metadata.IndexNameExpressionResolver;
import org.elasticsearch.cluster.node.DiscoveryNodes;
import org.elasticsearch.cluster.service.ClusterService;
import org.elasticsearch.common.io.stream.NamedWriteableRegistry;
import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.ClusterSettings;
import org.elasticsearch.common.settings.IndexScopedSettings;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.common.settings.SettingsFilter;
import org.elasticsearch.env.Environment;
import org.elasticsearch.features.NodeFeature;
import org.elasticsearch.plugins.ActionPlugin;
import org.elasticsearch.plugins.MockPluginsService;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.plugins.PluginsLoader;
import org.elasticsearch.plugins.PluginsService;
import org.elasticsearch.rest.BaseRestHandler;
import org.elasticsearch.rest.RestController;
import org.elasticsearch.rest.RestHandler;
import org.elasticsearch.rest.RestRequest;
import org.elasticsearch.rest.RestResponse;
import org.elasticsearch.rest.RestStatus;
import org.elasticsearch.transport.netty4.Netty4Plugin;
import org.elasticsearch.xcontent.XContentBuilder;

/**
 * Starts one real Elasticsearch node in this JVM from the server jar and the transport-netty4
 * module (the only module Elastic publishes on Maven Central). Arguments are node settings,
 * `key=value`, as for the OpenSearch launcher; `path.home` is required.
 *
 * It lives in org.elasticsearch.node because the way to hand a node classpath plugins
 * (NodeConstruction with a NodeServiceProvider, as the test framework's MockNode does) is
 * package-private; MockNode itself cannot be used: it initialises the test framework, which
 * refuses to run as root.
 */
public final class EsLauncher {
    /** Shared with the root handler: the node's cluster service, once built. */
    static volatile ClusterService clusterService;

    /**
     * `GET /`: the distribution serves it from its rest-root module, which is not published.
     * This answers the same fields from the running node (real version, build and cluster
     * UUID), so clients that identify the server first can talk to this node.
     */
    public static final class RootPlugin extends Plugin implements ActionPlugin {
        @Override
        public Collection<?> createComponents(PluginServices services) {
            clusterService = services.clusterService();
            return List.of();
        }

        @Override
        public Collection<RestHandler> getRestHandlers(Settings settings, NamedWriteableRegistry registry,
                RestController controller, ClusterSettings clusterSettings, IndexScopedSettings indexSettings,
                SettingsFilter filter, IndexNameExpressionResolver resolver, Supplier<DiscoveryNodes> nodes,
                Predicate<NodeFeature> features) {
            return List.of(new BaseRestHandler() {
                @Override
                public String getName() {
                    return "launcher_root_action";
                }

                @Override
                public List<Route> routes() {
                    return List.of(new Route(RestRequest.Method.GET, "/"), new Route(RestRequest.Method.HEAD, "/"));
                }

                @Override
                protected RestChannelConsumer prepareRequest(RestRequest request, NodeClient client) {
                    return channel -> {
                        Build b = Build.current();
                        XContentBuilder x = channel.newBuilder();
                        x.startObject()
                            .field("name", clusterService.getNodeName())
                            .field("cluster_name", clusterService.getClusterName().value())
                            .field("cluster_uuid", clusterService.state().metadata().clusterUUID())
                            .startObject("version")
                            .field("number", b.qualifiedVersion())
                            .field("build_flavor", b.flavor())
                            .field("build_type", b.type().displayName())
                            .field("build_hash", b.hash())
                            .field("build_date", b.date())
                            .field("build_snapshot", b.isSnapshot())
                            .field("lucene_version", org.apache.lucene.util.Version.LATEST.toString())
                            .field("minimum_wire_compatibility_version", b.minWireCompatVersion())
                            .field("minimum_index_compatibility_version", b.minIndexCompatVersion())
                            .endObject()
                            .field("tagline", "You Know, for Search")
                            .endObject();
                        channel.sendResponse(new RestResponse(RestStatus.OK, x));
                    };
                }
            });
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
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put(input)
            .build();
        String nodeName = settings.get("node.name", "node");

        LogConfigurator.configureESLogging(); // the server's logging facade needs its provider
        LogConfigurator.setNodeName(nodeName);
        Environment env = InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), null, () -> nodeName);
        NodeServiceProvider provider = new NodeServiceProvider() {
            @Override
            PluginsService newPluginService(Environment e, PluginsLoader loader) {
                return new MockPluginsService(e.settings(), e, List.of(Netty4Plugin.class, RootPlugin.class));
            }
        };
        // No module or plugin bundles, and no server exports (the server is not a named module here).
        PluginsLoader loader = PluginsLoader.createPluginsLoader(Set.of(), Set.of(), Map.of(), false);
        Node node = new Node(NodeConstruction.prepareConstruction(env, loader, provider, true));

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
     * stopping this node, the node closes too, so no JVM outlives the tests that started it.
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
