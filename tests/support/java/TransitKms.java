package secureml.test;

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.util.Base64;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.hadoop.conf.Configuration;
import org.apache.parquet.crypto.KeyAccessDeniedException;
import org.apache.parquet.crypto.keytools.KmsClient;

/**
 * A test-only parquet-java KmsClient speaking parquet-java's Vault Transit protocol (its
 * VaultClient sample lives in test jars that pyspark does not ship): wrap = POST
 * {"plaintext": b64} to /v1/{mount}/encrypt/{key}, unwrap = POST {"ciphertext": w} to
 * /v1/{mount}/decrypt/{key}, the "vault:vN:..." string kept verbatim.
 */
public class TransitKms implements KmsClient {
  private static final Pattern QUOTED = Pattern.compile("\"%s\"\\s*:\\s*\"([^\"]*)\"");
  private final HttpClient http = HttpClient.newHttpClient();
  private String base;
  private String mount;
  private String token;

  @Override
  public void initialize(
      Configuration configuration, String kmsInstanceID, String kmsInstanceURL, String accessToken) {
    boolean byDefault = kmsInstanceID == null || kmsInstanceID.isEmpty()
        || KMS_INSTANCE_ID_DEFAULT.equals(kmsInstanceID);
    mount = byDefault ? "transit" : kmsInstanceID;
    base = kmsInstanceURL;
    token = accessToken;
  }

  @Override
  public String wrapKey(byte[] keyBytes, String masterKeyIdentifier)
      throws KeyAccessDeniedException {
    String body = "{\"plaintext\":\"" + Base64.getEncoder().encodeToString(keyBytes) + "\"}";
    return field(post("encrypt", masterKeyIdentifier, body), "ciphertext");
  }

  @Override
  public byte[] unwrapKey(String wrappedKey, String masterKeyIdentifier)
      throws KeyAccessDeniedException {
    String body = "{\"ciphertext\":\"" + wrappedKey + "\"}";
    return Base64.getDecoder().decode(field(post("decrypt", masterKeyIdentifier, body), "plaintext"));
  }

  private String post(String operation, String key, String body) throws KeyAccessDeniedException {
    HttpRequest request = HttpRequest.newBuilder(
            URI.create(base + "/v1/" + mount + "/" + operation + "/" + key))
        .header("X-Vault-Token", token)
        .header("Content-Type", "application/json")
        .POST(HttpRequest.BodyPublishers.ofString(body))
        .build();
    HttpResponse<String> answer;
    try {
      answer = http.send(request, HttpResponse.BodyHandlers.ofString());
    } catch (IOException | InterruptedException e) {
      throw new IllegalStateException("Transit " + operation + " failed", e);
    }
    if (answer.statusCode() == 401 || answer.statusCode() == 403) {
      throw new KeyAccessDeniedException("Transit refused " + operation + " with " + key);
    }
    if (answer.statusCode() != 200) {
      throw new IllegalStateException("Transit " + operation + " answered " + answer.statusCode());
    }
    return answer.body();
  }

  private static String field(String json, String name) {
    Matcher found = Pattern.compile(String.format(QUOTED.pattern(), name)).matcher(json);
    if (!found.find()) {
      throw new IllegalStateException("Transit answered no " + name);
    }
    return found.group(1);
  }
}
