import java.io.BufferedOutputStream;
import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import javax.tools.JavaCompiler;
import javax.tools.ToolProvider;

/**
 * Compiles DIR/Main.java into DIR for each directory read from standard input, one per line,
 * and answers "STATUS LENGTH\n" followed by LENGTH bytes of compiler messages.
 *
 * A fresh javac costs about a second of JVM start-up and warm-up per program; one that stays
 * up compiles a HumanEval-X program in well under a tenth of that. Compiling does not run
 * the program's code (annotation processing is off), so sharing one JVM across samples is safe.
 */
public class CompileServer {
    public static void main(String[] args) throws IOException {
        JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
        BufferedReader requests = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        OutputStream replies = new BufferedOutputStream(new FileOutputStream(FileDescriptor.out));
        String directory;
        while ((directory = requests.readLine()) != null) {
            ByteArrayOutputStream messages = new ByteArrayOutputStream();
            int status;
            try {
                status = javac.run(null, messages, messages, "-d", directory, "-proc:none", "-encoding", "UTF-8",
                                   "-nowarn", directory + File.separator + "Main.java");
            } catch (RuntimeException | StackOverflowError e) {
                messages.write(("javac crashed: " + e).getBytes(StandardCharsets.UTF_8));
                status = 3;
            }
            byte[] text = messages.toByteArray();
            replies.write((status + " " + text.length + "\n").getBytes(StandardCharsets.UTF_8));
            replies.write(text);
            replies.flush();
        }
    }
}
