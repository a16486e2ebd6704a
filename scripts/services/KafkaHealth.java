// Health probe for the local Kafka broker started by scripts/services.sh.
// Compiled once against the broker's own kafka-clients jar; exits 0 when a
// metadata round trip (DescribeCluster + ListTopics) succeeds.
// usage: java -cp health:libs/* KafkaHealth 127.0.0.1:9092
import java.util.Collection;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.ListTopicsOptions;
import org.apache.kafka.common.Node;

public final class KafkaHealth {
    public static void main(String[] args) {
        String bootstrap = args.length > 0 ? args[0] : "127.0.0.1:9092";
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.CLIENT_ID_CONFIG, "dicomflow-services-health");
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "4000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "6000");
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");
        int rc = 1;
        try (Admin admin = Admin.create(p)) {
            DescribeClusterResult cluster = admin.describeCluster();
            Collection<Node> nodes = cluster.nodes().get(7, TimeUnit.SECONDS);
            String clusterId = cluster.clusterId().get(7, TimeUnit.SECONDS);
            Set<String> topics = admin.listTopics(new ListTopicsOptions().listInternal(true))
                    .names().get(7, TimeUnit.SECONDS);
            if (nodes.isEmpty()) {
                System.err.println("kafka not ready: no broker in metadata");
            } else {
                System.out.println("ok cluster_id=" + clusterId + " brokers=" + nodes.size()
                        + " topics=" + topics.size());
                rc = 0;
            }
        } catch (Exception e) {
            System.err.println("kafka not ready: " + e);
        }
        System.exit(rc);
    }
}
