#!/usr/bin/env bash
# Regenerates the vendored Strimzi CRDs (strimzi-<version>/) from Maven Central, with Strimzi's own generator:
# io.strimzi:crd-generator run over io.strimzi:api's classes, with the arguments of api's pom.xml
# (execution generate-crd-co-install-v1), which is how Strimzi makes the packaging/install CRDs it ships.
# Needs Maven and Java 21 or newer (JAVA=/path/to/java). Not run by the tests: they read the vendored files.
#   deploy/k8s/schemas/generate_strimzi_crds.sh [version]
set -euo pipefail

version="${1:-1.2.0}"
java="${JAVA:-java}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/strimzi-$version"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cat > "$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local</groupId><artifactId>strimzi-crds</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>io.strimzi</groupId><artifactId>api</artifactId><version>$version</version></dependency>
    <dependency>
      <groupId>io.strimzi</groupId><artifactId>crd-generator</artifactId><version>$version</version>
    </dependency>
  </dependencies>
</project>
POM
(cd "$work" && mvn -q dependency:copy-dependencies -DoutputDirectory=lib)

mkdir -p "$out"
model=io.strimzi.api.kafka.model
"$java" -cp "$work/lib/*" io.strimzi.crdgenerator.CrdGenerator \
  --label app:strimzi --label strimzi.io/crd-install:true --target-kube 1.16+ \
  --crd-api-version v1 --api-versions v1 --storage-version v1 --yaml \
  "$model.kafka.Kafka=$out/040-Crd-kafka.yaml" \
  "$model.topic.KafkaTopic=$out/043-Crd-kafkatopic.yaml" \
  "$model.user.KafkaUser=$out/044-Crd-kafkauser.yaml" \
  "$model.nodepool.KafkaNodePool=$out/045-Crd-kafkanodepool.yaml"
(cd "$work/lib" && sha256sum api-"$version".jar crd-generator-"$version".jar crd-annotations-"$version".jar)
echo "strimzi CRDs $version written to $out" >&2
